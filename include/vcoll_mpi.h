/*
 * vcoll's MPI part (libvcoll_mpi): communicators made from an MPI
 * communicator, and the host backend that runs vcoll's API over MPI on
 * machines without a GPU. Users who bring their own ncclComm_t need only
 * vcoll.h and libvcoll.
 */
#ifndef VCOLL_MPI_H_
#define VCOLL_MPI_H_

#include <mpi.h>

#include "vcoll.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Collective over `mpiComm`. backend:
 *   vcollBackendNccl: one GPU per rank (device = local rank, made current;
 *     a node with fewer visible GPUs than ranks is vcollInvalidUsage on
 *     every rank, unless VCOLL_SHARE_GPU=1, for tests: local rank modulo
 *     the visible devices); rank 0 creates the NCCL unique id
 *     and broadcasts it over MPI; the NCCL communicator is owned by the
 *     vcoll communicator and destroyed with it.
 *   vcollBackendHost: host buffers, MPI collectives on a duplicate of
 *     mpiComm (MPI must stay initialized until vcollCommDestroy).
 *   vcollBackendAuto: VCOLL_BACKEND=nccl|host if set, else nccl when every
 *     rank has a GPU of its own (each node at least as many visible GPUs
 *     as ranks, or VCOLL_SHARE_GPU), else host. All ranks make the same choice.
 * The ranks must end up with the same backend and the same VCOLL_CHECK;
 * where the backend argument, VCOLL_BACKEND or VCOLL_CHECK makes them
 * differ, every rank returns vcollInvalidUsage. */
VCOLL_API vcollResult_t vcollCommInitMPI(MPI_Comm mpiComm, vcollBackend_t backend, vcollComm_t* comm);

/* Creates a host-backend communicator (same as backend vcollBackendHost). */
VCOLL_API vcollResult_t vcollCommInitHost(MPI_Comm mpiComm, vcollComm_t* comm);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_MPI_H_ */

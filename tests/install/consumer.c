/* A program of a vcoll user, built only from what `meson install` put in
 * place and what pkg-config says (tests/install/install_test.sh): every
 * public header, one collective on the host backend, the host references
 * of NVFP4 and the weight layout. Exit 0 when all of it works. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vcoll.h>
#include <vcoll/gate.h>
#include <vcoll/moe.h>
#include <vcoll/nvfp4.h>
#include <vcoll/weight_layout.h>
#include <vcoll_mpi.h>

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "consumer: %s:%d: %s failed\n", __FILE__, __LINE__, #cond); \
      return 1;                                                         \
    }                                                                   \
  } while (0)

static int run(void) {
  int v = 0;
  CHECK(vcollGetVersion(&v) == vcollSuccess && v == VCOLL_VERSION_CODE);
  CHECK(vcollNvfp4PayloadBytes(3, 32) == 48);

  /* 16 bf16 zeros quantize to zero codes and a zero scale. */
  uint16_t x[16] = {0};
  uint8_t payload[8], scales[1];
  float gs = 1.0f;
  memset(payload, 0xee, sizeof(payload));
  scales[0] = 0xee;
  CHECK(vcollNvfp4QuantizeRef(x, vcollBfloat16, 1, 16, &gs, 0, payload, scales, vcollScaleLinear) == vcollSuccess);
  for (int i = 0; i < 8; i++) CHECK(payload[i] == 0);
  CHECK(scales[0] == 0);

  /* The weight-layout permutation of 128 rows is a permutation. */
  int32_t perm[128], seen[128] = {0};
  CHECK(vcollWeightPermutation(vcollWeightW13, 128, 128, perm) == vcollSuccess);
  for (int i = 0; i < 128; i++) CHECK(perm[i] >= 0 && perm[i] < 128 && !seen[perm[i]]++);

  /* allgatherv on the host backend, every rank 2 rows of 3 ints. */
  vcollComm_t comm;
  CHECK(vcollCommInitHost(MPI_COMM_WORLD, &comm) == vcollSuccess);
  int n, me;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  size_t counts[64];
  int32_t mine[6], all[64 * 6];
  for (int r = 0; r < n; r++) counts[r] = 2;
  for (int i = 0; i < 6; i++) mine[i] = me * 100 + i;
  vcollTensor_t t = {mine, all, 3, vcollInt32};
  CHECK(vcollAllGatherV(&t, 1, counts, comm, 0) == vcollSuccess);
  for (int r = 0; r < n; r++)
    for (int i = 0; i < 6; i++) CHECK(all[r * 6 + i] == r * 100 + i);
  CHECK(vcollCommDestroy(comm) == vcollSuccess);
  return 0;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = run();
  if (rc == 0) printf("consumer: OK\n");
  MPI_Finalize();
  return rc;
}

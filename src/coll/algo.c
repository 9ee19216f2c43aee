/* Algorithm names, forcing (per communicator or VCOLL_ALGO), and the
 * choice made for each call. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vcoll_internal.h"

static const char* collNames[] = {"allgatherv", "reducescatterv"};

static const struct vcollAlgo* table(vcollCollective_t coll, int* n) {
  if (coll == vcollCollAllGatherV) { *n = vcollAgvAlgoCount; return vcollAgvAlgos; }
  if (coll == vcollCollReduceScatterV) { *n = vcollRsvAlgoCount; return vcollRsvAlgos; }
  *n = 0;
  return NULL;
}

int vcollAlgoFind(vcollCollective_t coll, const char* name) {
  int n;
  const struct vcollAlgo* t = table(coll, &n);
  for (int i = 0; i < n; i++)
    if (strcmp(t[i].name, name) == 0) return i;
  return -1;
}

VCOLL_API const char* vcollAlgoName(vcollCollective_t coll, int index) {
  int n;
  const struct vcollAlgo* t = table(coll, &n);
  return (index >= 0 && index < n) ? t[index].name : NULL;
}

VCOLL_API vcollResult_t vcollCommSetAlgo(vcollComm_t comm, vcollCollective_t coll, const char* name) {
  static const char* op = "vcollCommSetAlgo";
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  if (coll != vcollCollAllGatherV && coll != vcollCollReduceScatterV)
    return VCOLL_ARGERR(comm, op, "invalid coll %d", (int)coll);
  if (name == NULL || strcmp(name, "auto") == 0) {
    comm->forcedAlgo[coll] = -1;
    return vcollSuccess;
  }
  int idx = vcollAlgoFind(coll, name);
  if (idx < 0) {
    char list[256] = "";
    int n;
    const struct vcollAlgo* t = table(coll, &n);
    for (int i = 0; i < n; i++) {
      strncat(list, " ", sizeof(list) - strlen(list) - 1);
      strncat(list, t[i].name, sizeof(list) - strlen(list) - 1);
    }
    return VCOLL_ARGERR(comm, op, "unknown %s algorithm '%s' (known: auto%s)", collNames[coll], name, list);
  }
  comm->forcedAlgo[coll] = idx;
  return vcollSuccess;
}

VCOLL_API const char* vcollCommLastAlgo(vcollComm_t comm, vcollCollective_t coll) {
  if (comm == NULL || (unsigned)coll > 1) return NULL;
  return comm->lastAlgo[coll];
}

/* Whether VCOLL_ALGO's value `env` is new (not the one checked last): its
 * unknown parts get a notice once per value (the variable is read per
 * call; tests change it). */
static int freshEnvAlgo(const char* env) {
  static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  static char checked[256];
  pthread_mutex_lock(&lock);
  const int fresh = strncmp(env, checked, sizeof(checked) - 1) != 0;
  if (fresh) snprintf(checked, sizeof(checked), "%s", env);
  pthread_mutex_unlock(&lock);
  return fresh;
}

/* VCOLL_ALGO is "name" (for every collective that has it) or a list
 * "allgatherv=name,reducescatterv=name" (':' for '=', ';' for ','); the
 * first part that decides for `coll` wins. Returns coll's forced
 * algorithm, -1 for none; with `notice`, a notice for every part that
 * names nothing. */
static int scanEnvAlgo(const char* env, vcollCollective_t coll, int notice) {
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", env);
  char* save = NULL;
  int found = -1, decided = 0;
  for (char* tok = strtok_r(buf, ",;", &save); tok; tok = strtok_r(NULL, ",;", &save)) {
    char* eq = strchr(tok, '=');
    if (eq == NULL) eq = strchr(tok, ':');
    int known = 0;
    if (eq) {
      const char sep = *eq;
      *eq = '\0';
      for (int c = 0; c < 2; c++)
        if (strcmp(tok, collNames[c]) == 0) {
          const int i = vcollAlgoFind((vcollCollective_t)c, eq + 1);
          known = i >= 0 || strcmp(eq + 1, "auto") == 0;
          if (c == (int)coll && !decided) found = i, decided = 1;
        }
      *eq = sep;
    } else {
      const int i = vcollAlgoFind(coll, tok);
      known = i >= 0 || strcmp(tok, "auto") == 0 ||
              vcollAlgoFind(coll == vcollCollAllGatherV ? vcollCollReduceScatterV : vcollCollAllGatherV, tok) >= 0;
      if (i >= 0 && !decided) found = i, decided = 1;
    }
    if (notice && !known)
      VCOLL_NOTICE("VCOLL_ALGO=%s: '%s' names no algorithm (allgatherv=NAME, reducescatterv=NAME or a NAME of "
                   "either; see vcollAlgoName); that part is ignored", env, tok);
  }
  return found;
}

static int envAlgo(vcollCollective_t coll) {
  const char* env = vcollParamAlgo();
  if (env == NULL) return -1;
  return scanEnvAlgo(env, coll, freshEnvAlgo(env));
}

void vcollAlgoEnvCheck(void) {
  const char* env = vcollParamAlgo();
  if (env != NULL && freshEnvAlgo(env)) scanEnvAlgo(env, vcollCollAllGatherV, 1); /* its parts of either */
}

int vcollAlgoChooseAuto(vcollComm_t comm, vcollCollective_t coll, const void* call, int autoIdx, int* isAuto) {
  int n;
  const struct vcollAlgo* t = table(coll, &n);
  int forced = comm->forcedAlgo[coll] >= 0 ? comm->forcedAlgo[coll] : envAlgo(coll);
  int idx = autoIdx;
  if (isAuto) *isAuto = 1;
  if (forced >= 0) {
    if (t[forced].supported(comm, call)) {
      idx = forced;
      if (isAuto) *isAuto = 0;
    } else {
      VCOLL_INFO("%s: forced algorithm %s cannot run this call (%s); using %s", collNames[coll], t[forced].name,
                 t[forced].description, t[autoIdx].name);
    }
  }
  if (!t[idx].supported(comm, call)) {
    /* The selection tables should never get here; the baseline runs every call. */
    VCOLL_WARN("%s: automatic choice %s cannot run this call (%s); using %s", collNames[coll], t[idx].name,
               t[idx].description, t[0].name);
    idx = 0;
  }
  comm->lastAlgo[coll] = t[idx].name;
  return idx;
}

int vcollAlgoChoose(vcollComm_t comm, vcollCollective_t coll, const void* call, int autoIdx) {
  return vcollAlgoChooseAuto(comm, coll, call, autoIdx, NULL);
}

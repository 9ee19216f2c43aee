#include "vcoll_internal.h"

VCOLL_API size_t vcollTypeSize(vcollDataType_t type) {
  switch (type) {
    case vcollInt8: case vcollUint8: case vcollFloat8e4m3: case vcollFloat8e5m2: return 1;
    case vcollFloat16: case vcollBfloat16: return 2;
    case vcollInt32: case vcollUint32: case vcollFloat32: return 4;
    case vcollInt64: case vcollUint64: case vcollFloat64: return 8;
    default: return 0;
  }
}

VCOLL_API const char* vcollTypeName(vcollDataType_t type) {
  static const char* names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "half",
                                "float", "double", "bfloat16", "f8e4m3", "f8e5m2"};
  return ((unsigned)type < vcollNumTypes) ? names[type] : "unknown";
}

VCOLL_API const char* vcollOpName(vcollRedOp_t op) {
  static const char* names[] = {"sum", "prod", "max", "min", "avg"};
  return ((unsigned)op < vcollNumOps) ? names[op] : "unknown";
}

int vcollTypeIsFloat(vcollDataType_t type) {
  switch (type) {
    case vcollFloat16: case vcollFloat32: case vcollFloat64: case vcollBfloat16:
    case vcollFloat8e4m3: case vcollFloat8e5m2: return 1;
    default: return 0;
  }
}

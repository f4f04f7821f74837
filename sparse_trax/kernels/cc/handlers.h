// The XLA FFI handlers of sparse_trax's CPU kernels, one per kernel family file;
// module.cc registers them with Python under their target names.

#ifndef SPARSE_TRAX_KERNELS_HANDLERS_H_
#define SPARSE_TRAX_KERNELS_HANDLERS_H_

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(SparseTraxStoredMatvec);   // stored_products.cc
XLA_FFI_DECLARE_HANDLER_SYMBOL(SparseTraxStoredVecmat);   // stored_products.cc
XLA_FFI_DECLARE_HANDLER_SYMBOL(SparseTraxSparseFF);       // sparse_ff.cc
XLA_FFI_DECLARE_HANDLER_SYMBOL(SparseTraxCachedAttention);  // attention.cc
XLA_FFI_DECLARE_HANDLER_SYMBOL(SparseTraxLayerNorm);      // layer_norm.cc
XLA_FFI_DECLARE_HANDLER_SYMBOL(SparseTraxSparseQKV);      // sparse_qkv.cc

#endif  // SPARSE_TRAX_KERNELS_HANDLERS_H_

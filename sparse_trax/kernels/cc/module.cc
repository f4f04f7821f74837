// The Python module `sparse_trax.kernels._cpu_kernels_<isa>` (its name from the
// SPARSE_TRAX_MODULE macro: setup.py builds one per x86-64 level): its one function
// returns {FFI target name: handler capsule}, which sparse_trax.kernels registers with XLA.

#include "Python.h"
#include "handlers.h"

static PyObject* Registrations(PyObject*, PyObject*) {
  static const struct {
    const char* name;
    XLA_FFI_Handler* handler;
  } kTargets[] = {
      {"sparse_trax_stored_matvec", SparseTraxStoredMatvec},
      {"sparse_trax_stored_vecmat", SparseTraxStoredVecmat},
      {"sparse_trax_sparse_ff", SparseTraxSparseFF},
      {"sparse_trax_cached_attention", SparseTraxCachedAttention},
      {"sparse_trax_layer_norm", SparseTraxLayerNorm},
      {"sparse_trax_sparse_qkv", SparseTraxSparseQKV},
  };
  PyObject* dict = PyDict_New();
  for (const auto& target : kTargets) {
    PyObject* capsule =
        PyCapsule_New(reinterpret_cast<void*>(target.handler), nullptr, nullptr);
    PyDict_SetItemString(dict, target.name, capsule);
    Py_DECREF(capsule);
  }
  return dict;
}

static PyMethodDef kMethods[] = {
    {"registrations", Registrations, METH_NOARGS, "FFI target name -> handler capsule."},
    {nullptr, nullptr, 0, nullptr}};

#ifndef SPARSE_TRAX_MODULE
#define SPARSE_TRAX_MODULE _cpu_kernels
#endif
#define SPARSE_TRAX_STRING2(x) #x
#define SPARSE_TRAX_STRING(x) SPARSE_TRAX_STRING2(x)
#define SPARSE_TRAX_JOIN2(a, b) a##b
#define SPARSE_TRAX_JOIN(a, b) SPARSE_TRAX_JOIN2(a, b)

static struct PyModuleDef kModule = {PyModuleDef_HEAD_INIT, SPARSE_TRAX_STRING(SPARSE_TRAX_MODULE),
                                     "sparse_trax's fused CPU kernels (XLA FFI handlers).", -1,
                                     kMethods};

PyMODINIT_FUNC SPARSE_TRAX_JOIN(PyInit_, SPARSE_TRAX_MODULE)(void) {
  return PyModule_Create(&kModule);
}

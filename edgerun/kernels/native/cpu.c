/* edgerun.kernels._cpu: which instruction-set variants of the kernels this CPU runs.
 * Compiled with baseline flags only, so that it runs on any CPU of its architecture;
 * edgerun/kernels/isa.py asks it before loading a variant (edgerun.kernels._native_<isa>). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The x86-64 variants this CPU (and OS: __builtin_cpu_supports checks that the vector state is
 * enabled) runs, best first; elsewhere the one baseline variant. */
static PyObject *py_supported_isas(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f");
    if (avx512) return Py_BuildValue("(sss)", "avx512", "avx2", "sse2");
    if (avx2) return Py_BuildValue("(ss)", "avx2", "sse2");
    return Py_BuildValue("(s)", "sse2");
#else
    return Py_BuildValue("(s)", "generic");
#endif
}

static PyMethodDef methods[] = {
    {"supported_isas", py_supported_isas, METH_NOARGS,
     "The kernel variants this CPU runs, best first (x86-64: avx512, avx2, sse2; elsewhere generic)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_cpu",
    .m_doc = "The CPU's instruction sets, for choosing a variant of the native kernels.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module); }

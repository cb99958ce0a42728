/* Python-buffer glue shared by the bindings (module.c, steps.c): arrays arrive through the
 * buffer protocol and are checked (float32, C-contiguous, size, writability, no overlap between
 * written buffers and anything else) before the GIL is released and a kernel runs. */
#ifndef EDGERUN_PYBUFFERS_H
#define EDGERUN_PYBUFFERS_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#include "kernels.h"

#define ER_MAX_BUFFERS 16

/* The buffers of one call; start with {.count = 0}, end with er_release_all. */
typedef struct {
    Py_buffer views[ER_MAX_BUFFERS];
    const char *names[ER_MAX_BUFFERS];
    int written[ER_MAX_BUFFERS]; /* the kernel writes this buffer */
    int count;
} er_buffer_set;

void er_release_all(er_buffer_set *set);

/* Acquires obj as `count` floats (exactly, or at least when at_least); NULL or None -> error.
 * Returns NULL with a Python exception set on failure (release the set in either case). */
float *er_acquire(er_buffer_set *set, PyObject *obj, const char *name, Py_ssize_t count, int at_least,
                  int writable);

/* Each buffer the kernel writes must not overlap any other buffer of the call: 0, else -1
 * with ValueError set. */
int er_check_no_overlap(const er_buffer_set *set);

/* spec = (code, a, b); 0, else -1 with an exception set (name prefixes the message). */
int er_parse_activation(PyObject *spec, er_act *act, const char *name);

#endif

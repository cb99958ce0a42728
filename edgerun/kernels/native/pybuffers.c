/* Python-buffer glue shared by the bindings; see pybuffers.h. */
#include "pybuffers.h"

#include <string.h>

void er_release_all(er_buffer_set *set)
{
    for (int i = 0; i < set->count; i++) PyBuffer_Release(&set->views[i]);
    set->count = 0;
}

static int is_float32_format(const char *format)
{
    if (format == NULL) return 0;
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
#if PY_BIG_ENDIAN
        if (format[0] == '<') return 0;
#endif
        format++;
    }
    return strcmp(format, "f") == 0;
}

float *er_acquire(er_buffer_set *set, PyObject *obj, const char *name, Py_ssize_t count, int at_least,
                  int writable)
{
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected a float32 array, got None", name);
        return NULL;
    }
    Py_buffer *view = &set->views[set->count];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a %sC-contiguous float32 array", name,
                     writable ? "writable " : "");
        return NULL;
    }
    set->names[set->count] = name;
    set->written[set->count++] = writable;
    if (view->itemsize != 4 || !is_float32_format(view->format)) {
        PyErr_Format(PyExc_TypeError, "%s: expected float32 items, got format '%s'", name,
                     view->format ? view->format : "?");
        return NULL;
    }
    Py_ssize_t have = view->len / 4;
    if (at_least ? have < count : have != count) {
        PyErr_Format(PyExc_ValueError, "%s: holds %zd floats, the kernel needs %s%zd", name, have,
                     at_least ? "at least " : "", count);
        return NULL;
    }
    return (float *)view->buf;
}

int er_check_no_overlap(const er_buffer_set *set)
{
    for (int i = 0; i < set->count; i++) {
        for (int j = 0; j < set->count; j++) {
            if (i == j || !set->written[i] || set->views[i].len == 0 || set->views[j].len == 0)
                continue;
            const char *a = set->views[i].buf, *b = set->views[j].buf;
            if (a < b + set->views[j].len && b < a + set->views[i].len) {
                PyErr_Format(PyExc_ValueError, "%s overlaps %s", set->names[i], set->names[j]);
                return -1;
            }
        }
    }
    return 0;
}

int er_parse_activation(PyObject *spec, er_act *act, const char *name)
{
    if (!PyArg_ParseTuple(spec, "iff", &act->kind, &act->a, &act->b)) return -1;
    if (act->kind < 0 || act->kind >= ER_ACT_COUNT) {
        PyErr_Format(PyExc_ValueError, "%s: unknown activation code %d", name, act->kind);
        return -1;
    }
    return 0;
}

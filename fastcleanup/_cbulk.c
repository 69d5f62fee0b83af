/* fastcleanup._cbulk: bulk unlink that releases the GIL once per chunk.
 *
 * A Python thread needs the GIL between two unlinks, so while the event-loop
 * thread runs Python the unlink threads queue behind it (a GIL convoy). Here
 * the names of a chunk are converted under the GIL, then the whole chunk is
 * unlinked without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* Entries per GIL release: long enough that the hand-over cost (a few µs)
 * vanishes next to the unlinks (~8 µs each), short enough that a stop
 * request or the loop thread waits at most a couple of milliseconds. */
#define CHUNK 256

/* The caller's own "skip" value in a per-entry fd list. */
#define SKIP_FD (-1)

/* Outcome of converting one name, kept in code[] for the unlink pass. */
#define PENDING 0     /* unlink it */
#define SKIPPED (-1)  /* counted, never touched */

typedef struct {
    int64_t *state;
    int fd;            /* the one fd, when fds is NULL */
    int *fds;          /* per-entry fds for [start, stop), or NULL */
    PyObject *names;   /* a list snapshot of names[start:stop] */
} job_t;

static int
check_state(PyObject *state, Py_buffer *view)
{
    if (!PyObject_CheckBuffer(state)) {
        PyErr_Format(PyExc_TypeError,
                     "state must be a writable buffer such as "
                     "array.array('q', [0, 0]), not %.100s",
                     Py_TYPE(state)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(state, view, PyBUF_FULL_RO) < 0) {
        return -1;
    }
    const char *fmt = view->format != NULL ? view->format : "B";
    if (*fmt == '@' || *fmt == '=') {
        fmt++;
    }
    const char *why = NULL;
    if (view->readonly) {
        why = "is read-only";
    }
    else if (!PyBuffer_IsContiguous(view, 'C')) {
        why = "is not contiguous";
    }
    else if (view->itemsize != (Py_ssize_t)sizeof(int64_t) ||
             (strcmp(fmt, "q") != 0 && strcmp(fmt, "l") != 0)) {
        why = "does not hold signed 64-bit ints (use typecode 'q')";
    }
    else if (view->len < 2 * (Py_ssize_t)sizeof(int64_t)) {
        why = "holds fewer than two items";
    }
    else if ((uintptr_t)view->buf % _Alignof(int64_t) != 0) {
        why = "is not aligned for 64-bit ints";
    }
    if (why != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "state %s: pass array.array('q', [0, 0])", why);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Read one fd from a Python int; -1 with an exception set on failure. */
static int
fd_from(PyObject *obj, const char *what, Py_ssize_t index)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        if (index < 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s must be None, an int or a list of ints, not %.100s",
                         what, Py_TYPE(obj)->tp_name);
        }
        else {
            PyErr_Format(PyExc_TypeError, "%s[%zd] must be an int, not %.100s",
                         what, index, Py_TYPE(obj)->tp_name);
        }
        return -2;
    }
    int overflow = 0;
    long value = PyLong_AsLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -2;
    }
    if (overflow != 0 || value < INT_MIN || value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: %R is out of range for a file descriptor",
                     what, obj);
        return -2;
    }
    return (int)value;
}

/* Convert names[k] for the unlink pass: *path points into *holder (or into
 * the str itself, which the snapshot list keeps alive). Returns PENDING, or
 * EINVAL when the item is no path; never leaves an exception set. */
static int
convert(PyObject *item, const char **path, PyObject **holder)
{
    *holder = NULL;
    *path = NULL;
    if (PyUnicode_CheckExact(item)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(item) < 0) {
            PyErr_Clear();
            return EINVAL;
        }
#endif
        if (PyUnicode_IS_ASCII(item)) {
            /* ASCII is the same in every file-system encoding, and the
             * UTF-8 form of an ASCII str is its own data: no copy. */
            Py_ssize_t size = 0;
            const char *data = PyUnicode_AsUTF8AndSize(item, &size);
            if (data == NULL) {
                PyErr_Clear();
                return EINVAL;
            }
            if ((Py_ssize_t)strlen(data) != size) {
                return EINVAL; /* embedded NUL */
            }
            *path = data;
            return PENDING;
        }
    }
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(item, &bytes)) {
        /* Wrong type, embedded NUL, unencodable, or a failing __fspath__:
         * the entry fails on its own and the job goes on. */
        PyErr_Clear();
        return EINVAL;
    }
    *holder = bytes;
    *path = PyBytes_AS_STRING(bytes);
    return PENDING;
}

static PyObject *
run(job_t *job, Py_ssize_t start, Py_ssize_t count)
{
    const char *paths[CHUNK];
    PyObject *holders[CHUNK];
    int code[CHUNK];
    int fds[CHUNK];
    int64_t *state = job->state;

    PyObject *failures = PyList_New(0);
    if (failures == NULL) {
        return NULL;
    }
    Py_ssize_t done = 0;
    while (done < count) {
        if (__atomic_load_n(&state[1], __ATOMIC_RELAXED) != 0) {
            break;
        }
        int n = count - done < CHUNK ? (int)(count - done) : CHUNK;
        for (int j = 0; j < n; j++) {
            fds[j] = job->fds != NULL ? job->fds[done + j] : job->fd;
            holders[j] = NULL;
            paths[j] = NULL;
            if (job->fds != NULL && fds[j] == SKIP_FD) {
                code[j] = SKIPPED;
            }
            else {
                code[j] = convert(PyList_GET_ITEM(job->names, done + j), &paths[j],
                                  &holders[j]);
            }
        }

        int finished = 0;
        Py_BEGIN_ALLOW_THREADS
        for (; finished < n; finished++) {
            if (__atomic_load_n(&state[1], __ATOMIC_RELAXED) != 0) {
                break;
            }
            if (code[finished] == PENDING) {
                if (unlinkat(fds[finished], paths[finished], 0) != 0 && errno != ENOENT) {
                    code[finished] = errno;
                }
            }
            __atomic_store_n(&state[0], (int64_t)(start + done + finished + 1),
                             __ATOMIC_RELAXED);
        }
        Py_END_ALLOW_THREADS

        int error = 0;
        for (int j = 0; j < n; j++) {
            Py_XDECREF(holders[j]);
            if (!error && j < finished && code[j] > 0) {
                PyObject *pair = Py_BuildValue("(ni)", start + done + j, code[j]);
                if (pair == NULL || PyList_Append(failures, pair) < 0) {
                    error = 1;
                }
                Py_XDECREF(pair);
            }
        }
        if (error) {
            Py_DECREF(failures);
            return NULL;
        }
        done += finished;
        if (finished < n) {
            break; /* stopped */
        }
    }
    return failures;
}

PyDoc_STRVAR(unlinkat_many_doc,
"unlinkat_many(dir_fds, names, state, start=0, stop=None) -> list[tuple[int, int]]\n"
"\n"
"Unlink names[start:stop] in order with unlinkat(fd, name, 0), releasing\n"
"the GIL once per chunk of 256 entries, and return the (index, errno) of\n"
"every entry that failed. A name already gone is a success; an item that is\n"
"no path (wrong type, embedded NUL) fails with EINVAL.\n"
"\n"
"dir_fds is None (names relative to the working directory), one int, or a\n"
"list of ints as long as names, where -1 skips the entry (counted, not\n"
"touched). state is a writable buffer of two signed 64-bit ints, e.g.\n"
"array.array('q', [0, 0]): state[0] is set to k + 1 once entry k is\n"
"finished; a nonzero state[1] stops the job before its next entry.\n"
"Bad arguments raise TypeError or ValueError before any file is touched.");

static PyObject *
unlinkat_many(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dir_fds", "names", "state", "start", "stop", NULL};
    PyObject *dir_fds, *names, *state, *stop_obj = Py_None;
    Py_ssize_t start = 0, stop;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|nO:unlinkat_many", kwlist,
                                     &dir_fds, &names, &state, &start, &stop_obj)) {
        return NULL;
    }
    if (!PyList_Check(names) && !PyTuple_Check(names)) {
        return PyErr_Format(PyExc_TypeError, "names must be a list or tuple, not %.100s",
                            Py_TYPE(names)->tp_name);
    }
    Py_ssize_t size = PySequence_Fast_GET_SIZE(names);
    int per_entry = PyList_Check(dir_fds) || PyTuple_Check(dir_fds);
    int one_fd = AT_FDCWD;
    if (per_entry) {
        if (PySequence_Fast_GET_SIZE(dir_fds) != size) {
            return PyErr_Format(PyExc_ValueError,
                                "dir_fds has %zd items but names has %zd",
                                PySequence_Fast_GET_SIZE(dir_fds), size);
        }
    }
    else if (dir_fds != Py_None) {
        one_fd = fd_from(dir_fds, "dir_fds", -1);
        if (one_fd == -2 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (stop_obj == Py_None) {
        stop = size;
    }
    else {
        stop = PyNumber_AsSsize_t(stop_obj, PyExc_OverflowError);
        if (stop == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (start < 0 || stop < start || stop > size) {
        return PyErr_Format(PyExc_ValueError,
                            "need 0 <= start <= stop <= len(names) (%zd), got %zd and %zd",
                            size, start, stop);
    }

    Py_buffer view;
    if (check_state(state, &view) < 0) {
        return NULL;
    }
    job_t job = {(int64_t *)view.buf, one_fd, NULL, NULL};
    PyObject *result = NULL;
    Py_ssize_t count = stop - start;
    if (per_entry && count > 0) {
        job.fds = PyMem_Malloc((size_t)count * sizeof(int));
        if (job.fds == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            int fd = fd_from(PySequence_Fast_GET_ITEM(dir_fds, start + i), "dir_fds",
                             start + i);
            if (fd == -2 && PyErr_Occurred()) {
                goto done;
            }
            job.fds[i] = fd;
        }
    }
    /* A snapshot: the caller's list may change while the GIL is released. */
    job.names = PySequence_GetSlice(names, start, stop);
    if (job.names == NULL) {
        goto done;
    }
    if (!PyList_Check(job.names)) {
        Py_SETREF(job.names, PySequence_List(job.names));
        if (job.names == NULL) {
            goto done;
        }
    }
    result = run(&job, start, count);
done:
    Py_XDECREF(job.names);
    PyMem_Free(job.fds);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(untrack_doc,
"untrack(obj) -> None\n"
"\n"
"Stop the cyclic garbage collector from tracking obj (no-op if untracked).\n"
"\n"
"Only for objects that can never be part of a reference cycle: a RemoveFile\n"
"holds nothing but its str or bytes path, which refers to nothing, so no\n"
"cycle can pass through it and reference counting alone frees it. Untracked,\n"
"a burst of 100k of them no longer lengthens every full collection.");

static PyObject *
untrack(PyObject *Py_UNUSED(module), PyObject *obj)
{
    if (PyObject_IS_GC(obj) && PyObject_GC_IsTracked(obj)) {
        PyObject_GC_UnTrack(obj);
    }
    Py_RETURN_NONE;
}

static PyMethodDef cbulk_methods[] = {
    {"unlinkat_many", (PyCFunction)(void (*)(void))unlinkat_many,
     METH_VARARGS | METH_KEYWORDS, unlinkat_many_doc},
    {"untrack", untrack, METH_O, untrack_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot cbulk_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    /* No module state and no static Python objects. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(cbulk_doc,
"Bulk unlink for fastcleanup's executor threads.\n"
"\n"
"unlinkat_many() removes a list of names and releases the GIL once per\n"
"chunk rather than once per file, so unlink threads keep going while the\n"
"event-loop thread runs Python. untrack() takes cycle-free task objects\n"
"out of the garbage collector's lists. Import fastcleanup._unlink, which\n"
"falls back to pure Python when this module is missing.");

static struct PyModuleDef cbulk_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastcleanup._cbulk",
    .m_doc = cbulk_doc,
    .m_size = 0,
    .m_methods = cbulk_methods,
    .m_slots = cbulk_slots,
};

PyMODINIT_FUNC
PyInit__cbulk(void)
{
    return PyModuleDef_Init(&cbulk_module);
}

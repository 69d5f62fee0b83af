/* fastcleanup._cbulk.RemoveFile and .Call: the task objects of a burst, built in C.
 *
 * A producer makes one RemoveFile per file. The pure-Python class costs a
 * frame per construction and, like every instance of a class statement,
 * its instances carry a garbage-collector header: each one is counted as
 * an allocation of the youngest generation, so 100,000 of them set off
 * some 140 collections, one of them full, even if each is untracked at
 * once. This RemoveFile holds one path and has no collector header, so it
 * costs neither. It checks its path as the Python class does;
 * fastcleanup._tasks copies kind, run, __repr__, __doc__ and __slots__ onto
 * it from that class, which stays the fallback when this module is not
 * built. Call, below, is the same idea for the commonest custom cleanup.
 *
 * A Python subclass is a class statement again: tracked, with its own
 * __init__ if it wants one (super().__init__(path) lands in RemoveFile_init).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *path; /* str or bytes, non-empty, no NUL */
} RemoveFileObject;

/* The checks of _tasks._fspath: a new reference to the path, or NULL. */
static PyObject *
checked_path(PyObject *path)
{
    if (PyUnicode_CheckExact(path)) {
        Py_INCREF(path);
    }
    else if (PyUnicode_Check(path) || PyBytes_Check(path) ||
             PyObject_HasAttrString((PyObject *)Py_TYPE(path), "__fspath__")) {
        path = PyOS_FSPath(path);
        if (path == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "RemoveFile expects a str, bytes or os.PathLike path, got %.100s",
                     Py_TYPE(path)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    int nul;
    if (PyUnicode_Check(path)) {
        len = PyUnicode_GET_LENGTH(path);
        nul = len > 0 && PyUnicode_FindChar(path, 0, 0, len, 1) != -1;
    }
    else {
        len = PyBytes_GET_SIZE(path);
        nul = len > 0 && memchr(PyBytes_AS_STRING(path), 0, (size_t)len) != NULL;
    }
    if (len == 0) {
        PyErr_SetString(PyExc_ValueError, "RemoveFile got an empty path");
    }
    else if (nul) {
        PyErr_Format(PyExc_ValueError, "RemoveFile got a path with a NUL byte: %R", path);
    }
    else {
        return path;
    }
    Py_DECREF(path);
    return NULL;
}

static int
RemoveFile_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", NULL};
    PyObject *path;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:RemoveFile", kwlist, &path)) {
        return -1;
    }
    path = checked_path(path);
    if (path == NULL) {
        return -1;
    }
    Py_XSETREF(((RemoveFileObject *)self)->path, path);
    return 0;
}

/* The keyword arguments of a vectorcall as a new dict in *out, or NULL
 * when there are none; -1 with an exception set on failure. */
static int
keywords_of(PyObject *kwnames, PyObject *const *values, PyObject **out)
{
    *out = NULL;
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) {
        return 0;
    }
    PyObject *kw = PyDict_New();
    if (kw == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), values[i]) < 0) {
            Py_DECREF(kw);
            return -1;
        }
    }
    *out = kw;
    return 0;
}

/* RemoveFile(path) on the type itself (never a subclass: tp_vectorcall is
 * not inherited): no argument tuple, no tp_new and tp_init round trip. */
static PyObject *
RemoveFile_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        /* Keywords, or a wrong count: the general call, which says what is wrong. */
        PyObject *kwargs, *tuple = PyTuple_New(nargs);
        if (tuple == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
        }
        if (keywords_of(kwnames, args + nargs, &kwargs) < 0) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyObject *self = PyType_Type.tp_call(type, tuple, kwargs);
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        return self;
    }
    PyObject *path = checked_path(args[0]);
    if (path == NULL) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *self = tp->tp_alloc(tp, 0);
    if (self == NULL) {
        Py_DECREF(path);
        return NULL;
    }
    ((RemoveFileObject *)self)->path = path;
    return self;
}

static void
RemoveFile_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(((RemoveFileObject *)self)->path);
    tp->tp_free(self);
    Py_DECREF(tp); /* an instance of a heap type holds a reference to it */
}

static PyObject *
RemoveFile_get_path(PyObject *self, void *Py_UNUSED(closure))
{
    PyObject *path = ((RemoveFileObject *)self)->path;
    if (path == NULL) {
        return PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute 'path'",
                            Py_TYPE(self)->tp_name);
    }
    return Py_NewRef(path);
}

/* Setting path checks it as the constructor does, so it only ever holds a
 * str or bytes. That is what lets this type do without the collector: it
 * can refer to nothing that refers back to it (no cycle to leak), and its
 * deallocator frees one string, never a chain of tasks. */
static int
RemoveFile_set_path(PyObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    PyObject *path = NULL;
    if (value != NULL) {
        path = checked_path(value);
        if (path == NULL) {
            return -1;
        }
    }
    Py_XSETREF(((RemoveFileObject *)self)->path, path);
    return 0;
}

static PyGetSetDef RemoveFile_getset[] = {
    {"path", RemoveFile_get_path, RemoveFile_set_path, "the path to remove (str or bytes)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot RemoveFile_slots[] = {
    /* The signature for inspect; _tasks replaces the text with the class's. */
    {Py_tp_doc, "RemoveFile(path)\n--\n\nRemove one file."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, RemoveFile_init},
    {Py_tp_dealloc, RemoveFile_dealloc},
    {Py_tp_getset, RemoveFile_getset},
    {0, NULL},
};

/* A heap type, and not immutable: _tasks sets kind, run and the rest. */
static PyType_Spec RemoveFile_spec = {
    .name = "fastcleanup.RemoveFile",
    .basicsize = sizeof(RemoveFileObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = RemoveFile_slots,
};

/* ---- Call: fn and its arguments in one object -----------------------------
 *
 * The Python class stores an args tuple and a kwargs dict beside itself:
 * three objects and a frame per construction (530 ns), two of them counted
 * by the collector. This type keeps the positional arguments inline and a
 * dict only when there are keywords: one collected object, built in about
 * a fifth of the time. It is tracked like any container (a stored
 * Call(self.close) is a cycle). Its arguments are taken by __new__, so a
 * subclass with another signature overrides __new__, not __init__. */

typedef struct {
    PyObject_VAR_HEAD          /* Py_SIZE: how many positional arguments */
    PyObject *fn;
    PyObject *kwargs;          /* a dict, or NULL without keywords */
    PyObject *args[1];
} CallObject;

/* What _tasks._is_async_def says, in C: an async def function or a method
 * bound to one. Anything else goes to the class's _check_callable. */
static int
checked_fn(PyTypeObject *tp, PyObject *fn)
{
    PyObject *f = PyMethod_Check(fn) ? PyMethod_GET_FUNCTION(fn) : fn;
    if (PyFunction_Check(f) &&
        (((PyCodeObject *)PyFunction_GET_CODE(f))->co_flags & CO_COROUTINE)) {
        return 0;
    }
    PyObject *check = PyObject_GetAttrString((PyObject *)tp, "_check_callable");
    if (check == NULL) {
        return -1;
    }
    PyObject *ok = PyObject_CallOneArg(check, fn);
    Py_DECREF(check);
    if (ok == NULL) {
        return -1;
    }
    Py_DECREF(ok);
    return 0;
}

static PyObject *
new_call(PyTypeObject *tp, PyObject *const *args, Py_ssize_t nargs, PyObject *kwargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "Call() needs an async function to call");
        return NULL;
    }
    if (checked_fn(tp, args[0]) < 0) {
        return NULL;
    }
    CallObject *self = (CallObject *)tp->tp_alloc(tp, nargs - 1);
    if (self == NULL) {
        return NULL;
    }
    self->fn = Py_NewRef(args[0]);
    for (Py_ssize_t i = 1; i < nargs; i++) {
        self->args[i - 1] = Py_NewRef(args[i]);
    }
    self->kwargs = kwargs; /* a new reference, or NULL */
    return (PyObject *)self;
}

static PyObject *
Call_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    PyObject *kw = NULL;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        kw = PyDict_Copy(kwargs);
        if (kw == NULL) {
            return NULL;
        }
    }
    PyObject *self = new_call(tp, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), kw);
    if (self == NULL) {
        Py_XDECREF(kw);
    }
    return self;
}

/* Call(fn, *args, **kwargs) on the type itself: no argument tuple. */
static PyObject *
Call_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *kw;
    if (keywords_of(kwnames, args + nargs, &kw) < 0) {
        return NULL;
    }
    PyObject *self = new_call((PyTypeObject *)type, args, nargs, kw);
    if (self == NULL) {
        Py_XDECREF(kw);
    }
    return self;
}

static int
Call_traverse(PyObject *op, visitproc visit, void *arg)
{
    CallObject *self = (CallObject *)op;
    Py_VISIT(Py_TYPE(op)); /* a heap type's instance refers to its type */
    Py_VISIT(self->fn);
    Py_VISIT(self->kwargs);
    for (Py_ssize_t i = 0; i < Py_SIZE(self); i++) {
        Py_VISIT(self->args[i]);
    }
    return 0;
}

static int
Call_clear(PyObject *op)
{
    CallObject *self = (CallObject *)op;
    Py_CLEAR(self->fn);
    Py_CLEAR(self->kwargs);
    for (Py_ssize_t i = 0; i < Py_SIZE(self); i++) {
        Py_CLEAR(self->args[i]);
    }
    return 0;
}

static void
Call_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    /* x = Call(f, x) nested 200,000 deep would free itself recursively and
     * overflow the C stack: the trashcan defers the deep part. */
    Py_TRASHCAN_BEGIN(op, Call_dealloc)
    Call_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

static PyObject *
Call_get_fn(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *fn = ((CallObject *)op)->fn;
    if (fn == NULL) { /* cleared by the collector */
        Py_RETURN_NONE;
    }
    return Py_NewRef(fn);
}

static PyObject *
Call_get_args(PyObject *op, void *Py_UNUSED(closure))
{
    CallObject *self = (CallObject *)op;
    PyObject *args = PyTuple_New(Py_SIZE(self));
    for (Py_ssize_t i = 0; args != NULL && i < Py_SIZE(self); i++) {
        PyObject *item = self->args[i] != NULL ? self->args[i] : Py_None;
        PyTuple_SET_ITEM(args, i, Py_NewRef(item));
    }
    return args;
}

static PyObject *
Call_get_kwargs(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *kwargs = ((CallObject *)op)->kwargs;
    return kwargs != NULL ? PyDict_Copy(kwargs) : PyDict_New();
}

/* fn(*args, **kwargs): what the batch worker awaits. */
static PyObject *
Call_call(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CallObject *self = (CallObject *)op;
    if (self->fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Call: cleared by the garbage collector");
        return NULL;
    }
    return PyObject_VectorcallDict(self->fn, self->args, Py_SIZE(self), self->kwargs);
}

static PyGetSetDef Call_getset[] = {
    {"fn", Call_get_fn, NULL, "the async function", NULL},
    {"args", Call_get_args, NULL, "its positional arguments (a new tuple)", NULL},
    {"kwargs", Call_get_kwargs, NULL, "its keyword arguments (a new dict)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Call_methods[] = {
    {"_call", Call_call, METH_NOARGS, "fn(*args, **kwargs), not awaited"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Call_slots[] = {
    {Py_tp_doc, "Call(async_fn, /, *args, **kwargs)\n--\n\nAwait async_fn(*args, **kwargs)."},
    {Py_tp_new, Call_new},
    {Py_tp_dealloc, Call_dealloc},
    {Py_tp_traverse, Call_traverse},
    {Py_tp_clear, Call_clear},
    {Py_tp_getset, Call_getset},
    {Py_tp_methods, Call_methods},
    {0, NULL},
};

static PyType_Spec Call_spec = {
    .name = "fastcleanup.Call",
    .basicsize = offsetof(CallObject, args),
    .itemsize = sizeof(PyObject *),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Call_slots,
};

/* ---- the dispatcher's per-file steps, done in C ---------------------------
 *
 * A burst of 100,000 files goes through the loop thread as about a hundred
 * batches, and each step the loop takes per file is time the unlinking
 * threads wait for a core. attrgetter("path") costs some 50 ns a task and
 * map(type) plus list.count some 18; these loops take a few ns a task. */

/* window(items, cls, limit, others): how many of the first `limit` items of
 * the iterable `items` to take so that at most `others` of them are not of
 * exactly type `cls` (it stops before the next one), as (taken, not_cls).
 * Only types are compared: no __eq__ of the user's runs. */
static PyObject *
window(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        return PyErr_Format(PyExc_TypeError, "window() takes 4 arguments (%zd given)", nargs);
    }
    if (!PyType_Check(args[1])) {
        return PyErr_Format(PyExc_TypeError, "window(): cls must be a type, not %.100s",
                            Py_TYPE(args[1])->tp_name);
    }
    Py_ssize_t limit = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t others = PyNumber_AsSsize_t(args[3], PyExc_OverflowError);
    if (others == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(args[0]);
    if (it == NULL) {
        return NULL;
    }
    Py_ssize_t n = 0, found = 0;
    PyObject *item;
    while (n < limit && (item = PyIter_Next(it)) != NULL) {
        int same = Py_TYPE(item) == (PyTypeObject *)args[1];
        Py_DECREF(item);
        if (!same) {
            if (found == others) {
                break;
            }
            found++;
        }
        n++;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) { /* a deque changed size while it was read, say */
        return NULL;
    }
    return Py_BuildValue("(nn)", n, found);
}

/* split(tasks, cls): the slots of a list whose items are of exactly type
 * cls, and the slots of the rest, as two lists of ints. */
static PyObject *
split(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        return PyErr_Format(PyExc_TypeError, "split() takes 2 arguments (%zd given)", nargs);
    }
    if (!PyList_Check(args[0])) {
        return PyErr_Format(PyExc_TypeError, "split(): tasks must be a list, not %.100s",
                            Py_TYPE(args[0])->tp_name);
    }
    if (!PyType_Check(args[1])) {
        return PyErr_Format(PyExc_TypeError, "split(): cls must be a type, not %.100s",
                            Py_TYPE(args[1])->tp_name);
    }
    PyObject *same = PyList_New(0), *rest = PyList_New(0);
    if (same == NULL || rest == NULL) {
        goto error;
    }
    /* No Python code runs in the loop, so the list cannot change under it. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *slot = PyLong_FromSsize_t(i);
        PyObject *into = Py_TYPE(PyList_GET_ITEM(args[0], i)) == (PyTypeObject *)args[1] ? same
                                                                                        : rest;
        if (slot == NULL || PyList_Append(into, slot) < 0) {
            Py_XDECREF(slot);
            goto error;
        }
        Py_DECREF(slot);
    }
    return Py_BuildValue("(NN)", same, rest);
error:
    Py_XDECREF(same);
    Py_XDECREF(rest);
    return NULL;
}

/* paths_of(tasks, start): [t.path for t in tasks[start:]] for a list. A
 * RemoveFile of this module's own type gives its slot; any other task (a
 * subclass, whose path may be a property) is asked for its path attribute. */
static PyObject *
paths_of(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        return PyErr_Format(PyExc_TypeError, "paths_of() takes 2 arguments (%zd given)", nargs);
    }
    if (!PyList_Check(args[0])) {
        return PyErr_Format(PyExc_TypeError, "paths_of(): tasks must be a list, not %.100s",
                            Py_TYPE(args[0])->tp_name);
    }
    Py_ssize_t start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0) {
        return PyErr_Format(PyExc_ValueError, "paths_of(): start must be >= 0, got %zd", start);
    }
    /* A copy first: a path property of the user's may change the list. */
    PyObject *tasks = PyList_GetSlice(args[0], start, PY_SSIZE_T_MAX);
    if (tasks == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(tasks);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(tasks);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *task = PyList_GET_ITEM(tasks, k);
        PyObject *path;
        /* Only the base type has this dealloc: a subclass has CPython's. */
        if (Py_TYPE(task)->tp_dealloc == RemoveFile_dealloc &&
            ((RemoveFileObject *)task)->path != NULL) {
            path = Py_NewRef(((RemoveFileObject *)task)->path);
        }
        else {
            path = PyObject_GetAttrString(task, "path");
            if (path == NULL) {
                Py_DECREF(out);
                Py_DECREF(tasks);
                return NULL;
            }
        }
        PyList_SET_ITEM(out, k, path);
    }
    Py_DECREF(tasks);
    return out;
}

static PyMethodDef task_functions[] = {
    {"window", (PyCFunction)(void (*)(void))window, METH_FASTCALL,
     "window(items, cls, limit, others) -> (taken, not_cls)\n--\n\n"
     "How many of the first limit items to take so that at most others of them\n"
     "are not of exactly type cls, and how many of those are not."},
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(tasks, cls) -> (list[int], list[int])\n--\n\n"
     "The slots of the list's items of exactly type cls, and the slots of the rest."},
    {"paths_of", (PyCFunction)(void (*)(void))paths_of, METH_FASTCALL,
     "paths_of(tasks, start) -> list\n--\n\n"
     "[t.path for t in tasks[start:]], read from the slot of a plain RemoveFile."},
    {NULL, NULL, 0, NULL},
};

/* Create one task type; the module's name for it is its spec's last part. */
static int
add_type(PyObject *module, PyType_Spec *spec, vectorcallfunc call)
{
    PyObject *type = PyType_FromSpec(spec);
    if (type == NULL) {
        return -1;
    }
    /* No spec slot sets it before Python 3.14; the field is public. */
    ((PyTypeObject *)type)->tp_vectorcall = call;
    if (PyModule_AddObject(module, strrchr(spec->name, '.') + 1, type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

int
add_task_types(PyObject *module)
{
    if (PyModule_AddFunctions(module, task_functions) < 0 ||
        add_type(module, &RemoveFile_spec, RemoveFile_vectorcall) < 0) {
        return -1;
    }
    return add_type(module, &Call_spec, Call_vectorcall);
}

/* fastcleanup._cbulk.RemoveFile: the task object of a burst, built in C.
 *
 * A producer makes one RemoveFile per file. The pure-Python class costs a
 * frame per construction and, like every instance of a class statement,
 * its instances carry a garbage-collector header: each one is counted as
 * an allocation of the youngest generation, so 100,000 of them set off
 * some 140 collections, one of them full, even if each is untracked at
 * once. This type holds one path and has no collector header, so it costs
 * neither. It checks its path as the Python class does; fastcleanup._tasks
 * copies kind, run, __repr__, __doc__ and __slots__ onto it from that
 * class, which stays the fallback when this module is not built.
 *
 * A Python subclass is a class statement again: tracked, with its own
 * __init__ if it wants one (super().__init__(path) lands in RemoveFile_init).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

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

/* RemoveFile(path) on the type itself (never a subclass: tp_vectorcall is
 * not inherited): no argument tuple, no tp_new and tp_init round trip. */
static PyObject *
RemoveFile_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        /* Keywords, or a wrong count: the general call says what is wrong. */
        PyTypeObject *tp = (PyTypeObject *)type;
        PyObject *self = tp->tp_alloc(tp, 0);
        if (self == NULL) {
            return NULL;
        }
        PyObject *tuple = PyTuple_New(nargs);
        PyObject *kwargs = NULL;
        int ok = tuple != NULL;
        for (Py_ssize_t i = 0; ok && i < nargs; i++) {
            PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
        }
        if (ok && kwnames != NULL) {
            kwargs = PyDict_New();
            ok = kwargs != NULL;
            for (Py_ssize_t i = 0; ok && i < PyTuple_GET_SIZE(kwnames); i++) {
                ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) == 0;
            }
        }
        ok = ok && RemoveFile_init(self, tuple, kwargs) == 0;
        Py_XDECREF(tuple);
        Py_XDECREF(kwargs);
        if (!ok) {
            Py_CLEAR(self);
        }
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

static PyMemberDef RemoveFile_members[] = {
    {"path", T_OBJECT_EX, offsetof(RemoveFileObject, path), 0, "the path to remove"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot RemoveFile_slots[] = {
    /* The signature for inspect; _tasks replaces the text with the class's. */
    {Py_tp_doc, "RemoveFile(path)\n--\n\nRemove one file."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, RemoveFile_init},
    {Py_tp_dealloc, RemoveFile_dealloc},
    {Py_tp_members, RemoveFile_members},
    {0, NULL},
};

/* A heap type, and not immutable: _tasks sets kind, run and the rest. */
static PyType_Spec RemoveFile_spec = {
    .name = "fastcleanup.RemoveFile",
    .basicsize = sizeof(RemoveFileObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = RemoveFile_slots,
};

int
add_remove_file(PyObject *module)
{
    PyObject *type = PyType_FromSpec(&RemoveFile_spec);
    if (type == NULL) {
        return -1;
    }
    /* No spec slot sets it before Python 3.14; the field is public. */
    ((PyTypeObject *)type)->tp_vectorcall = RemoveFile_vectorcall;
    if (PyModule_AddObject(module, "RemoveFile", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* fastcleanup._cbulk.submitter: a cleaner's submit function, built in C.
 *
 * submit() is the one call a producer makes per task, often on the loop
 * thread itself, whose time in a burst the unlinking threads wait for.
 * The Python closure (_intake.pure_submitter) costs a frame per call,
 * about 90 ns on Python 3.11. This is a builtin function whose self is
 * the cleaner's `hot` list, which CPython calls through its specialized
 * path for builtins (about 50 ns). It takes the closure's steps: call
 * hot[0] with the task (hot[4] instead when the context variable hot[3]
 * is set: the task comes from one of the cleaner's own cleanups; hot[3]
 * is None while none of those runs), and if
 * hot[1] is True, call hot[2]. An Exception from either is swallowed, as
 * submit must never raise; KeyboardInterrupt and SystemExit go on, as
 * they do from the closure. Reading the context variable costs a few
 * nanoseconds: CPython caches its value per thread and context.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* hot = [put, idle, wake, parent, follow], as _intake.Intake keeps it. */
#define HOT_SIZE 5

/* fn(arg), or fn() when arg is NULL: 0, or -1 with an exception set that
 * is no Exception (an interrupt). */
static int
call_quietly(PyObject *fn, PyObject *arg)
{
    Py_INCREF(fn); /* the cleaner may put another in hot meanwhile */
    PyObject *r = arg == NULL ? PyObject_CallNoArgs(fn) : PyObject_CallOneArg(fn, arg);
    Py_DECREF(fn);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

static PyObject *
submit(PyObject *hot, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    /* submit(task) or submit(task=task), as the closure takes it. */
    if (nargs + nkw != 1 ||
        (nkw == 1 &&
         PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "task") != 0)) {
        return PyErr_Format(PyExc_TypeError,
                            "submit() takes exactly one argument, the task (%zd given)",
                            nargs + nkw);
    }
    /* The cleaner only assigns hot's items, so it always holds HOT_SIZE;
     * the size checks keep a list changed by other hands from being read past. */
    if (PyList_GET_SIZE(hot) != HOT_SIZE) {
        Py_RETURN_NONE;
    }
    PyObject *put = PyList_GET_ITEM(hot, 0);
    PyObject *parent = PyList_GET_ITEM(hot, 3);
    if (PyContextVar_CheckExact(parent)) {
        PyObject *value = NULL;
        if (PyContextVar_Get(parent, NULL, &value) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return NULL;
            }
            PyErr_Clear(); /* only MemoryError: take the common path */
        }
        else if (value != NULL) {
            Py_DECREF(value);
            put = PyList_GET_ITEM(hot, 4); /* borrowed: no Python code ran since the size check */
        }
    }
    if (call_quietly(put, args[0]) < 0) {
        return NULL;
    }
    /* hot[1] is True while the dispatcher sleeps (only bools are stored). */
    if (PyList_GET_SIZE(hot) == HOT_SIZE && PyList_GET_ITEM(hot, 1) == Py_True &&
        call_quietly(PyList_GET_ITEM(hot, 2), NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The docstring of _intake.pure_submitter's closure (tests/test_intake.py
 * compares them). */
static PyMethodDef submit_def = {
    "submit", (PyCFunction)(void (*)(void))submit, METH_FASTCALL | METH_KEYWORDS,
    "submit(task)\n--\n\n"
    "Hand ``task`` over; it runs on the cleaner's loop.\n"
    "\n"
    "Never raises and never blocks: safe in ``__del__``, ``weakref.finalize``\n"
    "callbacks, signal handlers and other threads. One C-level append to the\n"
    "queue (re-entrant, no lock) and one flag test; only when the dispatcher\n"
    "sleeps, one wakeup. Before ``init_worker()`` and after ``shutdown()`` the\n"
    "task goes to the refusal counter instead. Submitted by a cleanup of the\n"
    "same cleaner, it is one that drain() waits for if it waits for that cleanup.\n",
};

static PyObject *
submitter(PyObject *Py_UNUSED(module), PyObject *hot)
{
    if (!PyList_Check(hot)) {
        return PyErr_Format(PyExc_TypeError, "submitter(): hot must be a list, not %.100s",
                            Py_TYPE(hot)->tp_name);
    }
    if (PyList_GET_SIZE(hot) != HOT_SIZE) {
        return PyErr_Format(PyExc_ValueError, "submitter(): hot must hold %d items, not %zd",
                            HOT_SIZE, PyList_GET_SIZE(hot));
    }
    return PyCFunction_New(&submit_def, hot);
}

static PyMethodDef intake_functions[] = {
    {"submitter", submitter, METH_O,
     "submitter(hot) -> submit\n--\n\n"
     "The submit function over hot, a cleaner's [put, idle, wake, parent, follow] list."},
    {NULL, NULL, 0, NULL},
};

int
add_intake_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, intake_functions);
}

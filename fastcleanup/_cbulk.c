/* fastcleanup._cbulk: bulk unlink that releases the GIL once per chunk.
 *
 * A Python thread needs the GIL between two unlinks, so while the event-loop
 * thread runs Python the unlink threads queue behind it (a GIL convoy). Here
 * the names of a chunk are converted under the GIL, then the whole chunk is
 * unlinked without it.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
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
    int64_t *attempted; /* state[2] when the buffer has it, or NULL */
} job_t;

/* A new list with the items of a list or tuple, copied in C: no method of
 * a subclass runs, so its length cannot change while it is read. */
static PyObject *
snapshot(PyObject *seq)
{
    if (PyList_Check(seq)) {
        return PyList_GetSlice(seq, 0, PyList_GET_SIZE(seq));
    }
    PyObject *out = PyList_New(PyTuple_GET_SIZE(seq));
    for (Py_ssize_t i = 0; out != NULL && i < PyTuple_GET_SIZE(seq); i++) {
        PyList_SET_ITEM(out, i, Py_NewRef(PyTuple_GET_ITEM(seq, i)));
    }
    return out;
}

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
            if (job->attempted != NULL) {
                __atomic_store_n(job->attempted, (int64_t)(start + done + finished + 1),
                                 __ATOMIC_RELAXED);
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
"touched). state is a writable buffer of two or three signed 64-bit ints,\n"
"e.g. array.array('q', [0, 0, 0]): state[0] is set to k + 1 once entry k\n"
"is finished; a nonzero state[1] stops the job before its next entry; a\n"
"third item is set to k + 1 before entry k is attempted (after the check\n"
"of state[1]), so that state[2] > state[0] means entry state[0] is under way.\n"
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
    /* Owned copies first, taken without running any Python code: what runs
     * below (stop.__index__, a path's __fspath__) may change the caller's
     * lists, and no length or item is read from them afterwards. */
    PyObject *all_names = snapshot(names), *all_fds = NULL;
    if (all_names == NULL) {
        return NULL;
    }
    Py_buffer view = {0};
    job_t job = {NULL, AT_FDCWD, NULL, NULL};
    PyObject *result = NULL;
    Py_ssize_t size = PyList_GET_SIZE(all_names);
    if (PyList_Check(dir_fds) || PyTuple_Check(dir_fds)) {
        all_fds = snapshot(dir_fds);
        if (all_fds == NULL) {
            goto done;
        }
        if (PyList_GET_SIZE(all_fds) != size) {
            PyErr_Format(PyExc_ValueError, "dir_fds has %zd items but names has %zd",
                         PyList_GET_SIZE(all_fds), size);
            goto done;
        }
    }
    else if (dir_fds != Py_None) {
        job.fd = fd_from(dir_fds, "dir_fds", -1);
        if (job.fd == -2 && PyErr_Occurred()) {
            goto done;
        }
    }
    if (stop_obj == Py_None) {
        stop = size;
    }
    else {
        stop = PyNumber_AsSsize_t(stop_obj, PyExc_OverflowError);
        if (stop == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    if (start < 0 || stop < start || stop > size) {
        PyErr_Format(PyExc_ValueError,
                     "need 0 <= start <= stop <= len(names) (%zd), got %zd and %zd", size,
                     start, stop);
        goto done;
    }
    if (check_state(state, &view) < 0) {
        goto done;
    }
    job.state = (int64_t *)view.buf;
    job.attempted = view.len >= 3 * (Py_ssize_t)sizeof(int64_t) ? job.state + 2 : NULL;
    Py_ssize_t count = stop - start;
    if (all_fds != NULL && count > 0) {
        job.fds = PyMem_Malloc((size_t)count * sizeof(int));
        if (job.fds == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            int fd = fd_from(PyList_GET_ITEM(all_fds, start + i), "dir_fds", start + i);
            if (fd == -2 && PyErr_Occurred()) {
                goto done;
            }
            job.fds[i] = fd;
        }
    }
    job.names = PyList_GetSlice(all_names, start, stop);
    if (job.names != NULL) {
        result = run(&job, start, count);
    }
done:
    Py_XDECREF(job.names);
    Py_XDECREF(all_names);
    Py_XDECREF(all_fds);
    PyMem_Free(job.fds);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    return result;
}

/* ---- Job and Pool: file jobs that run with no GIL at all ------------------
 *
 * unlinkat_many() still needs the GIL to be called, to pick up the next
 * job and to report back; while the loop thread runs Python, a thread that
 * waits for the GIL can wait tens of milliseconds (every release of the
 * GIL by the loop thread around its poll resets the waiter's forced-switch
 * timer). A Job is converted on the loop thread, which holds the GIL
 * anyway; a Pool's threads take jobs from a C queue, run them without the
 * GIL, and report through an eventfd that the loop watches. */

#define FALLBACK 1   /* confined(): this entry needs the Python resolver */
#define SLOTS 256    /* parent cache slots per job (a power of two) */
#define MAX_OPEN 128 /* parent descriptors held at once by one job */
/* O_PATH: walking a directory and unlinking in it needs search permission
 * only, as unlink(2) by path does; O_RDONLY would also need read permission. */
#define PARENT_FLAGS (O_PATH | O_DIRECTORY | O_CLOEXEC)
#define DIR_FLAGS (PARENT_FLAGS | O_NOFOLLOW)
/* Entries between two sched_yield() calls. Some unlinks hold a CPU in the
 * kernel for milliseconds (directory lock spinning, freeing inodes); with a
 * job on every core, a woken event loop thread then waits that long for a
 * CPU whatever the lane threads' nice value. A yield this often costs one
 * cheap syscall per YIELD_EVERY files and hands that thread the CPU. */
#define YIELD_EVERY 32

typedef struct JobObject {
    PyObject_HEAD
    Py_ssize_t count;
    const char **paths;  /* per entry; points into names[k] or holders[k] */
    PyObject **holders;  /* converted bytes per entry, or NULL */
    int *code;           /* PENDING, then 0 or an errno once done passes it */
    PyObject *names;     /* snapshot list: keeps every str alive */
    Py_ssize_t nroots;
    const char **roots;  /* resolved roots, no trailing slash except "/" itself */
    size_t *root_len;
    int *root_fd;        /* per run: -1 not opened, -2 failed */
    PyObject *root_holder;
    int64_t done;        /* atomic: entries finished */
    int64_t attempted;   /* atomic: entries begun; done + 1 while one is under way */
    int stop;            /* atomic: nonzero stops before the next entry */
    int started;         /* atomic: taken by run() or a pool thread */
    int finished;        /* atomic, and under mu */
    int queued;          /* put in a pool (touched with the GIL only) */
    Py_ssize_t fallback_at;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct JobObject *next;
} JobObject;

/* Outcomes of resolving one parent, cached for all of its files. P_OPEN
 * is a directory opened by the O_NOFOLLOW walk of its own spelling, which
 * the walk of a deeper parent may start from; P_RESOLVED one opened
 * through realpath(3), which serves its own files only. P_SEEN and
 * P_BYPATH serve jobs without roots: a parent seen once, and one whose
 * files are unlinked by path (opening it failed). */
enum { P_OPEN, P_RESOLVED, P_GONE, P_FAIL, P_FALLBACK, P_SEEN, P_BYPATH };
#define REFUSED_CODE 0x10000 /* code[k]: outside every root (larger than any errno) */

typedef struct {
    const char *parent; /* a prefix of one entry's path; NULL marks a free slot */
    size_t len;
    int status;         /* one of the P_ outcomes */
    int value;          /* P_OPEN, P_RESOLVED: the descriptor; P_FAIL: errno or REFUSED_CODE */
} slot_t;

static PyTypeObject Job_Type;

static uint64_t
hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    }
    return h;
}

/* The root that directory p[0:plen] lies in, as spelled, or -1; *rest is
 * the part below it (Roots._lexical's prefix test). */
static Py_ssize_t
root_of(JobObject *job, const char *p, size_t plen, const char **rest, size_t *restlen)
{
    for (Py_ssize_t r = 0; r < job->nroots; r++) {
        const char *root = job->roots[r];
        size_t rl = job->root_len[r];
        if (rl == 1) { /* "/" */
            *rest = p + 1;
            *restlen = plen - 1;
            return r;
        }
        if (plen >= rl && memcmp(p, root, rl) == 0 && (plen == rl || p[rl] == '/')) {
            *rest = plen == rl ? p + plen : p + rl + 1;
            *restlen = plen == rl ? 0 : plen - rl - 1;
            return r;
        }
    }
    return -1;
}

static void
close_slots(slot_t *table, int *open_count)
{
    for (int i = 0; i < SLOTS; i++) {
        if (table[i].parent != NULL &&
            (table[i].status == P_OPEN || table[i].status == P_RESOLVED)) {
            close(table[i].value);
        }
        table[i].parent = NULL;
    }
    *open_count = 0;
}

/* The slot of parent p[0:plen]: its entry, or a free slot to fill. A free
 * slot is taken only after *open_count is checked, which may empty the
 * table: call again then. */
static size_t
slot_of(slot_t *table, const char *p, size_t plen)
{
    size_t i = (size_t)hash_bytes(p, plen) & (SLOTS - 1);
    while (table[i].parent != NULL &&
           !(table[i].len == plen && memcmp(table[i].parent, p, plen) == 0)) {
        i = (i + 1) & (SLOTS - 1);
    }
    return i;
}

/* Fill free slot i (found by slot_of) for parent p[0:plen]; at MAX_OPEN
 * slots in use the table is emptied first, descriptors closed. */
static size_t
fill_slot(slot_t *table, int *open_count, size_t i, const char *p, size_t plen, int status,
          int value)
{
    if (*open_count >= MAX_OPEN) {
        close_slots(table, open_count);
        i = slot_of(table, p, plen);
    }
    table[i].parent = p;
    table[i].len = plen;
    table[i].status = status;
    table[i].value = value;
    *open_count += 1;
    return i;
}

/* Open rest[0:restlen] below root r, one O_NOFOLLOW component at a time
 * from the root's descriptor (opened once per run): 0 with *fd set, an
 * errno, or -1 when only the Python resolver can say (the root itself
 * cannot be opened, the path is too long). With a table, rest is the tail
 * of p, a plainly spelled path that the table's keys point into: the walk
 * starts from the deepest ancestor of p this job has already walked to and
 * keeps each ancestor it opens there, so that a job opens each directory
 * below a root once, however many parents share it. Without a table
 * (realpath(3) results, a path too deep to cache) it opens every component. */
static int
walk(JobObject *job, Py_ssize_t r, const char *p, const char *rest, size_t restlen,
     slot_t *table, int *open_count, int *fd)
{
    if (job->root_fd[r] == -1) {
        job->root_fd[r] = open(job->roots[r], DIR_FLAGS);
        if (job->root_fd[r] < 0) {
            job->root_fd[r] = -2;
        }
    }
    int cur = job->root_fd[r];
    if (cur < 0) {
        return -1;
    }
    if (restlen == 0) {
        *fd = dup(cur);
        return *fd < 0 ? -1 : 0;
    }
    if (restlen >= PATH_MAX) {
        return -1;
    }
    const char *part = rest, *end = rest + restlen;
    if (table != NULL) {
        size_t parts = 1;
        for (const char *c = rest; c < end; c++) {
            parts += *c == '/';
        }
        if (parts > MAX_OPEN / 2) {
            table = NULL; /* the table must never fill up: SLOTS > MAX_OPEN * 3 / 2 */
        }
        else if (*open_count + (int)parts > MAX_OPEN) {
            close_slots(table, open_count);
        }
    }
    for (const char *c = end; table != NULL && c-- > rest;) {
        if (*c == '/') {
            size_t i = slot_of(table, p, (size_t)(c - p));
            if (table[i].parent != NULL && table[i].status == P_OPEN) {
                cur = table[i].value;
                part = c + 1;
                break;
            }
        }
    }
    char name[PATH_MAX];
    int owned = 0; /* cur is an ancestor the table does not keep: this walk closes it */
    for (;;) {
        const char *slash = memchr(part, '/', (size_t)(end - part));
        size_t n = (size_t)((slash != NULL ? slash : end) - part);
        memcpy(name, part, n);
        name[n] = '\0';
        int next = openat(cur, name, DIR_FLAGS);
        int err = errno;
        if (owned) {
            close(cur);
        }
        if (next < 0) {
            return err;
        }
        if (slash == NULL) {
            *fd = next;
            return 0;
        }
        owned = 1;
        if (table != NULL) {
            size_t len = (size_t)(slash - p);
            size_t i = slot_of(table, p, len);
            if (table[i].parent == NULL) {
                table[i] = (slot_t){p, len, P_OPEN, next};
                *open_count += 1;
                owned = 0;
            }
        }
        cur = next;
        part = slash + 1;
    }
}

/* Resolve parent p[0:plen] as Roots.open_dir does. A plainly spelled
 * absolute parent under a root is walked at once: the O_NOFOLLOW walk
 * alone proves it is inside. Otherwise, or when that walk meets a symlink
 * or a non-directory, the parent is resolved with realpath(3) (".." and
 * symlinks), matched against the roots, and walked again from its root. A
 * missing parent means its files are gone. realpath(3) fails on a missing
 * component where Python's realpath goes on, so any such failure is left
 * to the Python resolver, as is a name without a slash. */
static int
open_parent(JobObject *job, const char *p, size_t plen, slot_t *table, int *open_count,
            int *value)
{
    const char *rest;
    size_t restlen;
    int err;
    if (p[0] == '/' && memmem(p, plen, "/.", 2) == NULL && memmem(p, plen, "//", 2) == NULL) {
        Py_ssize_t r = root_of(job, p, plen, &rest, &restlen);
        if (r >= 0) {
            err = walk(job, r, p, rest, restlen, table, open_count, value);
            if (err == 0) {
                return P_OPEN;
            }
            if (err == ENOENT) {
                return P_GONE;
            }
            if (err < 0) {
                return P_FALLBACK;
            }
        }
    }
    char spelled[PATH_MAX], real[PATH_MAX];
    if (plen >= sizeof(spelled)) {
        return P_FALLBACK;
    }
    memcpy(spelled, p, plen);
    spelled[plen] = '\0';
    if (realpath(spelled, real) == NULL) {
        return P_FALLBACK;
    }
    Py_ssize_t r = root_of(job, real, strlen(real), &rest, &restlen);
    if (r < 0) {
        *value = REFUSED_CODE;
        return P_FAIL;
    }
    err = walk(job, r, real, rest, restlen, NULL, open_count, value);
    if (err == 0) {
        return P_RESOLVED;
    }
    if (err < 0) {
        return P_FALLBACK;
    }
    if (err == ENOENT) {
        return P_GONE;
    }
    *value = err;
    return P_FAIL;
}

/* One entry of a job without roots, as unlink(2) of its path would do it.
 * A parent's second file opens it, and its files from then on are
 * unlinked by descriptor: the kernel then looks up one name per file, not
 * the whole path (about a tenth less time per file on tmpfs, measured with
 * six components). A parent seen once costs no open, so a trickle of files
 * in distinct directories makes one syscall per file as before. Opening
 * follows symlinks as unlink(2) does, and a parent that cannot be opened
 * leaves its files to unlink by path, so every errno is unlink's own. */
static int
plain(JobObject *job, Py_ssize_t k, slot_t *table, int *open_count)
{
    const char *p = job->paths[k];
    const char *slash = strrchr(p, '/');
    if (slash == NULL || slash[1] == '\0' || strcmp(slash + 1, ".") == 0 ||
        strcmp(slash + 1, "..") == 0) {
        return unlinkat(AT_FDCWD, p, 0) != 0 && errno != ENOENT ? errno : 0;
    }
    size_t plen = slash == p ? 1 : (size_t)(slash - p);
    size_t i = slot_of(table, p, plen);
    if (table[i].parent == NULL) {
        i = fill_slot(table, open_count, i, p, plen, P_SEEN, -1);
    }
    else if (table[i].status == P_SEEN) {
        char parent[PATH_MAX];
        int opened = -1;
        if (plen < sizeof(parent)) {
            memcpy(parent, p, plen);
            parent[plen] = '\0';
            opened = open(parent, PARENT_FLAGS);
        }
        table[i].status = opened >= 0 ? P_OPEN : P_BYPATH;
        table[i].value = opened;
    }
    int fd = table[i].status == P_OPEN ? table[i].value : AT_FDCWD;
    const char *name = fd == AT_FDCWD ? p : slash + 1;
    return unlinkat(fd, name, 0) != 0 && errno != ENOENT ? errno : 0;
}

/* One entry under the roots: 0 when done (code[k] set), FALLBACK when the
 * Python resolver must take it from here. split() decides the name as
 * the Python side does: a path without a slash, or one that ends in "",
 * "." or "..", is left to it. */
static int
confined(JobObject *job, Py_ssize_t k, slot_t *table, int *open_count)
{
    const char *p = job->paths[k];
    const char *slash = strrchr(p, '/');
    if (slash == NULL || (slash > p && slash[-1] == '/')) {
        return FALLBACK;
    }
    const char *name = slash + 1;
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        return FALLBACK;
    }
    size_t plen = slash == p ? 1 : (size_t)(slash - p);
    size_t i = slot_of(table, p, plen);
    if (table[i].parent == NULL) {
        int value = 0;
        int status = open_parent(job, p, plen, table, open_count, &value);
        if (status == P_FALLBACK) {
            return FALLBACK;
        }
        /* The walk may have filled slots with ancestors, or emptied the table. */
        i = fill_slot(table, open_count, slot_of(table, p, plen), p, plen, status, value);
    }
    switch (table[i].status) {
    case P_OPEN:
    case P_RESOLVED:
        job->code[k] = unlinkat(table[i].value, name, 0) != 0 && errno != ENOENT ? errno : 0;
        break;
    case P_FAIL:
        job->code[k] = table[i].value;
        break;
    default: /* P_GONE: so is the file */
        job->code[k] = 0;
    }
    return 0;
}

/* The whole job, without the GIL. */
static void
run_entries(JobObject *job)
{
    slot_t table[SLOTS];
    int open_count = 0;
    for (int i = 0; i < SLOTS; i++) {
        table[i].parent = NULL;
    }
    for (Py_ssize_t r = 0; r < job->nroots; r++) {
        job->root_fd[r] = -1;
    }
    for (Py_ssize_t k = 0; k < job->count; k++) {
        if (__atomic_load_n(&job->stop, __ATOMIC_ACQUIRE) != 0) {
            break;
        }
        /* Published after the stop check: a watchdog that sees attempted ==
         * done knows no entry is under way, and that none starts once it
         * sets stop, so it never times out an entry that was never begun. */
        __atomic_store_n(&job->attempted, (int64_t)(k + 1), __ATOMIC_SEQ_CST);
        if (job->code[k] == PENDING) {
            if (job->nroots == 0) {
                job->code[k] = plain(job, k, table, &open_count);
            }
            else if (confined(job, k, table, &open_count) == FALLBACK) {
                job->fallback_at = k;
                break;
            }
        }
        __atomic_store_n(&job->done, (int64_t)(k + 1), __ATOMIC_RELEASE);
        if ((k + 1) % YIELD_EVERY == 0) {
            sched_yield();
        }
    }
    close_slots(table, &open_count);
    for (Py_ssize_t r = 0; r < job->nroots; r++) {
        if (job->root_fd[r] >= 0) {
            close(job->root_fd[r]);
        }
    }
}

static void
finish(JobObject *job)
{
    pthread_mutex_lock(&job->mu);
    __atomic_store_n(&job->finished, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&job->cv);
    pthread_mutex_unlock(&job->mu);
}

static PyObject *
Job_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"names", "roots", NULL};
    PyObject *names, *roots = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:Job", kwlist, &names, &roots)) {
        return NULL;
    }
    if (!PyList_Check(names) && !PyTuple_Check(names)) {
        return PyErr_Format(PyExc_TypeError, "names must be a list or tuple, not %.100s",
                            Py_TYPE(names)->tp_name);
    }
    if (roots != Py_None && !PyTuple_Check(roots)) {
        return PyErr_Format(PyExc_TypeError, "roots must be None or a tuple, not %.100s",
                            Py_TYPE(roots)->tp_name);
    }
    JobObject *job = (JobObject *)type->tp_alloc(type, 0);
    if (job == NULL) {
        return NULL;
    }
    pthread_mutex_init(&job->mu, NULL);
    pthread_cond_init(&job->cv, NULL);
    job->fallback_at = -1;
    job->names = PySequence_List(names);
    if (job->names == NULL) {
        goto error;
    }
    Py_ssize_t n = PyList_GET_SIZE(job->names);
    job->count = n;
    job->paths = PyMem_Calloc((size_t)(n ? n : 1), sizeof(char *));
    job->holders = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    job->code = PyMem_Calloc((size_t)(n ? n : 1), sizeof(int));
    if (job->paths == NULL || job->holders == NULL || job->code == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        job->code[k] =
            convert(PyList_GET_ITEM(job->names, k), &job->paths[k], &job->holders[k]);
    }
    if (roots != Py_None) {
        Py_ssize_t nr = PyTuple_GET_SIZE(roots);
        job->root_holder = PyTuple_New(nr);
        job->roots = PyMem_Calloc((size_t)(nr ? nr : 1), sizeof(char *));
        job->root_len = PyMem_Calloc((size_t)(nr ? nr : 1), sizeof(size_t));
        job->root_fd = PyMem_Calloc((size_t)(nr ? nr : 1), sizeof(int));
        if (job->root_holder == NULL || job->roots == NULL || job->root_len == NULL ||
            job->root_fd == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_NoMemory();
            }
            goto error;
        }
        for (Py_ssize_t r = 0; r < nr; r++) {
            PyObject *bytes = NULL;
            if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(roots, r), &bytes)) {
                goto error;
            }
            PyTuple_SET_ITEM(job->root_holder, r, bytes);
            const char *root = PyBytes_AS_STRING(bytes);
            size_t len = (size_t)PyBytes_GET_SIZE(bytes);
            if (len == 0 || root[0] != '/' || strlen(root) != len ||
                (len > 1 && root[len - 1] == '/')) {
                PyErr_Format(PyExc_ValueError,
                             "roots[%zd] must be an absolute, resolved directory: %R", r,
                             PyTuple_GET_ITEM(roots, r));
                goto error;
            }
            job->roots[r] = root;
            job->root_len[r] = len;
        }
        job->nroots = nr;
        if (nr == 0) {
            PyErr_SetString(PyExc_ValueError, "roots is empty: pass None for no confinement");
            goto error;
        }
    }
    return (PyObject *)job;
error:
    Py_DECREF(job);
    return NULL;
}

static void
Job_dealloc(JobObject *job)
{
    if (job->holders != NULL) {
        for (Py_ssize_t k = 0; k < job->count; k++) {
            Py_XDECREF(job->holders[k]);
        }
    }
    PyMem_Free(job->paths);
    PyMem_Free(job->holders);
    PyMem_Free(job->code);
    PyMem_Free(job->roots);
    PyMem_Free(job->root_len);
    PyMem_Free(job->root_fd);
    Py_XDECREF(job->root_holder);
    Py_XDECREF(job->names);
    pthread_mutex_destroy(&job->mu);
    pthread_cond_destroy(&job->cv);
    Py_TYPE(job)->tp_free((PyObject *)job);
}

static int
claim(JobObject *job)
{
    int expected = 0;
    return __atomic_compare_exchange_n(&job->started, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

static PyObject *
Job_run(JobObject *job, PyObject *Py_UNUSED(ignored))
{
    if (job->queued || !claim(job)) {
        PyErr_SetString(PyExc_RuntimeError, "this job has already been started");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    run_entries(job);
    finish(job);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
Job_wait(JobObject *job, PyObject *args)
{
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "|O:wait", &timeout)) {
        return NULL;
    }
    double seconds = -1.0;
    if (timeout != Py_None) {
        seconds = PyFloat_AsDouble(timeout);
        if (seconds == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (!(seconds >= 0.0)) {
            seconds = 0.0;
        }
    }
    int finished;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&job->mu);
    if (seconds < 0.0) {
        while (!job->finished) {
            pthread_cond_wait(&job->cv, &job->mu);
        }
    }
    else if (!job->finished) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double whole = seconds > 1e9 ? 1e9 : seconds;
        until.tv_sec += (time_t)whole;
        until.tv_nsec += (long)((whole - (double)(time_t)whole) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000L;
        }
        while (!job->finished) {
            if (pthread_cond_timedwait(&job->cv, &job->mu, &until) == ETIMEDOUT) {
                break;
            }
        }
    }
    finished = job->finished;
    pthread_mutex_unlock(&job->mu);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(finished);
}

static PyObject *
Job_failures(JobObject *job, PyObject *Py_UNUSED(ignored))
{
    int64_t done = __atomic_load_n(&job->done, __ATOMIC_ACQUIRE);
    PyObject *out = PyList_New(0);
    for (Py_ssize_t k = 0; out != NULL && k < (Py_ssize_t)done; k++) {
        if (job->code[k] > 0) {
            PyObject *pair = Py_BuildValue("(ni)", k, job->code[k]);
            if (pair == NULL || PyList_Append(out, pair) < 0) {
                Py_CLEAR(out);
            }
            Py_XDECREF(pair);
        }
    }
    return out;
}

static Py_ssize_t
Job_len(JobObject *job)
{
    return job->count;
}

static PyObject *
Job_get_done(JobObject *job, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(__atomic_load_n(&job->done, __ATOMIC_ACQUIRE));
}

static PyObject *
Job_get_attempted(JobObject *job, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(__atomic_load_n(&job->attempted, __ATOMIC_SEQ_CST));
}

static PyObject *
Job_get_stop(JobObject *job, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(__atomic_load_n(&job->stop, __ATOMIC_ACQUIRE));
}

static int
Job_set_stop(JobObject *job, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "stop cannot be deleted");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    __atomic_store_n(&job->stop, truth, __ATOMIC_RELEASE);
    return 0;
}

static PyObject *
Job_get_running(JobObject *job, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(__atomic_load_n(&job->started, __ATOMIC_ACQUIRE) &&
                           !__atomic_load_n(&job->finished, __ATOMIC_ACQUIRE));
}

static PyObject *
Job_get_finished(JobObject *job, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(__atomic_load_n(&job->finished, __ATOMIC_ACQUIRE));
}

static PyObject *
Job_get_fallback_at(JobObject *job, void *Py_UNUSED(closure))
{
    if (!__atomic_load_n(&job->finished, __ATOMIC_ACQUIRE)) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromSsize_t(job->fallback_at);
}

static PyGetSetDef Job_getset[] = {
    {"done", (getter)Job_get_done, NULL, "entries finished: index + 1 of the last one", NULL},
    {"attempted", (getter)Job_get_attempted, NULL,
     "entries begun: done + 1 while entry done is under way, else done", NULL},
    {"stop", (getter)Job_get_stop, (setter)Job_set_stop,
     "set to stop the job before its next entry", NULL},
    {"running", (getter)Job_get_running, NULL, "started and not yet finished", NULL},
    {"finished", (getter)Job_get_finished, NULL, "the job has ended", NULL},
    {"fallback_at", (getter)Job_get_fallback_at, NULL,
     "the entry the job stopped at because only the Python resolver can decide it, "
     "or -1",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Job_methods[] = {
    {"run", (PyCFunction)Job_run, METH_NOARGS,
     "run() -> None\n\nRun the job in this thread, without the GIL."},
    {"wait", (PyCFunction)Job_wait, METH_VARARGS,
     "wait(timeout=None) -> bool\n\nWait for the job to end; True once it has."},
    {"failures", (PyCFunction)Job_failures, METH_NOARGS,
     "failures() -> list[tuple[int, int]]\n\n(index, errno) of the finished entries that "
     "failed."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Job_as_sequence = {
    .sq_length = (lenfunc)Job_len,
};

PyDoc_STRVAR(Job_doc,
"Job(names, roots=None)\n"
"\n"
"A list of paths to unlink, converted now (with the GIL) and run later by\n"
"run() or a Pool thread, without it. A name already gone is a success; an\n"
"item that is no path fails with EINVAL. With roots (a tuple of resolved,\n"
"absolute directories), each parent is resolved once per job as\n"
"Roots.open_dir does (a plain spelling under a root walked at once, any\n"
"other through realpath(3) first), opened from its root's descriptor one\n"
"O_NOFOLLOW component at a time, and its files unlinked by descriptor; a\n"
"parent outside every root fails its files with REFUSED, a missing one\n"
"means they are gone. An entry only the Python resolver decides (a name\n"
"without a slash or ending in '.', '..' or '/', a parent realpath(3)\n"
"cannot resolve) ends the job: fallback_at names it and done stops before\n"
"it.");

static PyTypeObject Job_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastcleanup._cbulk.Job",
    .tp_basicsize = sizeof(JobObject),
    .tp_dealloc = (destructor)Job_dealloc,
    .tp_as_sequence = &Job_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Job_doc,
    .tp_methods = Job_methods,
    .tp_getset = Job_getset,
    .tp_new = Job_new,
};

/* The pool's shared state outlives the Pool object while a thread serves:
 * at interpreter exit a daemon thread may still be waiting on it. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    JobObject *head, *tail;   /* queued, each holding a reference */
    JobObject *done_head, *done_tail;
    int efd;
    int closed;               /* atomic */
    int refs;                 /* atomic: the Pool object and each serving thread */
    pid_t pid;
} pool_t;

typedef struct {
    PyObject_HEAD
    pool_t *p;
} PoolObject;

static void
pool_unref(pool_t *p)
{
    if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        close(p->efd);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
    }
}

static PyObject *
Pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":Pool", kwlist)) {
        return NULL;
    }
    pool_t *p = calloc(1, sizeof(pool_t));
    if (p == NULL) {
        return PyErr_NoMemory();
    }
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        free(p);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->refs = 1;
    p->pid = getpid();
    PoolObject *self = (PoolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        pool_unref(p);
        return NULL;
    }
    self->p = p;
    return (PyObject *)self;
}

static void
pool_close(pool_t *p)
{
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->closed, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void
Pool_dealloc(PoolObject *self)
{
    pool_t *p = self->p;
    if (p != NULL && p->pid == getpid()) {
        pool_close(p);
        /* Jobs no thread will run, or that no one collected. */
        pthread_mutex_lock(&p->mu);
        JobObject *done = p->done_head;
        p->done_head = p->done_tail = NULL;
        JobObject *queued = __atomic_load_n(&p->refs, __ATOMIC_ACQUIRE) == 1 ? p->head : NULL;
        if (queued != NULL) {
            p->head = p->tail = NULL;
        }
        pthread_mutex_unlock(&p->mu);
        for (JobObject *lists[2] = {done, queued}, **l = lists; l < lists + 2; l++) {
            while (*l != NULL) {
                JobObject *next = (*l)->next;
                Py_DECREF(*l);
                *l = next;
            }
        }
        pool_unref(p);
    }
    /* In a forked child the parent's threads are gone and its lock may be
     * held forever: leave the state alone. */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Pool_put(PoolObject *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &Job_Type)) {
        return PyErr_Format(PyExc_TypeError, "put() takes a Job, not %.100s",
                            Py_TYPE(arg)->tp_name);
    }
    JobObject *job = (JobObject *)arg;
    pool_t *p = self->p;
    if (job->queued || __atomic_load_n(&job->started, __ATOMIC_ACQUIRE)) {
        PyErr_SetString(PyExc_RuntimeError, "this job has already been started");
        return NULL;
    }
    if (__atomic_load_n(&p->closed, __ATOMIC_ACQUIRE)) {
        PyErr_SetString(PyExc_RuntimeError, "the pool is closed");
        return NULL;
    }
    Py_INCREF(job);
    job->queued = 1;
    job->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->tail != NULL) {
        p->tail->next = job;
    }
    else {
        p->head = job;
    }
    p->tail = job;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    Py_RETURN_NONE;
}

static PyObject *
Pool_serve(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    pool_t *p = self->p;
    __atomic_add_fetch(&p->refs, 1, __ATOMIC_ACQ_REL);
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->head == NULL && !__atomic_load_n(&p->closed, __ATOMIC_ACQUIRE)) {
            pthread_cond_wait(&p->cv, &p->mu);
        }
        JobObject *job = p->head;
        if (job == NULL) {
            pthread_mutex_unlock(&p->mu);
            break; /* closed, and nothing left to run */
        }
        p->head = job->next;
        if (p->head == NULL) {
            p->tail = NULL;
        }
        pthread_mutex_unlock(&p->mu);

        if (claim(job)) {
            run_entries(job);
        }
        finish(job);
        /* The pool's reference travels on with the job: completed() hands
         * it to the caller. Nothing here touches the job afterwards. */
        pthread_mutex_lock(&p->mu);
        job->next = NULL;
        if (p->done_tail != NULL) {
            p->done_tail->next = job;
        }
        else {
            p->done_head = job;
        }
        p->done_tail = job;
        pthread_mutex_unlock(&p->mu);
        uint64_t one = 1;
        ssize_t wrote = write(p->efd, &one, sizeof(one));
        (void)wrote; /* a full counter (EAGAIN) is readable already */
    }
    pool_unref(p);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
Pool_completed(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    pool_t *p = self->p;
    uint64_t value;
    ssize_t got = read(p->efd, &value, sizeof(value));
    (void)got; /* EAGAIN: nothing was signalled, the list may still hold jobs */
    pthread_mutex_lock(&p->mu);
    JobObject *job = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    PyObject *out = PyList_New(0);
    while (job != NULL) {
        JobObject *next = job->next;
        job->next = NULL;
        job->queued = 0;
        if (out != NULL && PyList_Append(out, (PyObject *)job) < 0) {
            Py_CLEAR(out);
        }
        Py_DECREF(job); /* the pool's reference; the list holds its own */
        job = next;
    }
    return out;
}

static PyObject *
Pool_close(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    pool_close(self->p);
    Py_RETURN_NONE;
}

static PyObject *
Pool_fileno(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->p->efd);
}

static PyMethodDef Pool_methods[] = {
    {"put", (PyCFunction)Pool_put, METH_O, "put(job) -> None\n\nQueue a Job for a thread."},
    {"serve", (PyCFunction)Pool_serve, METH_NOARGS,
     "serve() -> None\n\nRun queued jobs without the GIL until close(); the body of a "
     "pool thread."},
    {"completed", (PyCFunction)Pool_completed, METH_NOARGS,
     "completed() -> list[Job]\n\nThe jobs that ended since the last call, in order; "
     "resets fileno()."},
    {"close", (PyCFunction)Pool_close, METH_NOARGS,
     "close() -> None\n\nLet serve() return once the queued jobs have run."},
    {"fileno", (PyCFunction)Pool_fileno, METH_NOARGS,
     "fileno() -> int\n\nAn eventfd, readable once a job has ended."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Pool_doc,
"Pool()\n"
"\n"
"A queue of Jobs for threads that call serve(): they run each job without\n"
"the GIL and make fileno() readable when one ends, for the event loop to\n"
"collect with completed(). Taking a job and reporting it need no GIL\n"
"either, so the threads keep unlinking while the loop thread runs Python.");

static PyTypeObject Pool_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastcleanup._cbulk.Pool",
    .tp_basicsize = sizeof(PoolObject),
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Pool_doc,
    .tp_methods = Pool_methods,
    .tp_new = Pool_new,
};


static PyMethodDef cbulk_methods[] = {
    {"unlinkat_many", (PyCFunction)(void (*)(void))unlinkat_many,
     METH_VARARGS | METH_KEYWORDS, unlinkat_many_doc},
    {NULL, NULL, 0, NULL},
};

int add_task_types(PyObject *module);   /* _ctask.c: RemoveFile and Call */
int add_intake_functions(PyObject *module); /* _cintake.c: submitter */
int add_tree_functions(PyObject *module);   /* _ctree.c: walk_trees */

static int
cbulk_exec(PyObject *module)
{
    if (PyType_Ready(&Job_Type) < 0 || PyType_Ready(&Pool_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Job", (PyObject *)&Job_Type) < 0 ||
        PyModule_AddObjectRef(module, "Pool", (PyObject *)&Pool_Type) < 0 ||
        PyModule_AddIntConstant(module, "REFUSED", REFUSED_CODE) < 0) {
        return -1;
    }
    if (add_task_types(module) < 0 || add_tree_functions(module) < 0) {
        return -1;
    }
    return add_intake_functions(module);
}

static PyModuleDef_Slot cbulk_slots[] = {
    {Py_mod_exec, cbulk_exec},
    {0, NULL},
};

PyDoc_STRVAR(cbulk_doc,
"Bulk unlink for fastcleanup's executor threads.\n"
"\n"
"unlinkat_many() removes a list of names and releases the GIL once per\n"
"chunk rather than once per file, so unlink threads keep going while the\n"
"event-loop thread runs Python; Job and Pool run file jobs with no GIL at\n"
"all. RemoveFile and Call are the task types of fastcleanup._tasks, and\n"
"submitter() makes the submit of fastcleanup._intake, built in C. Import\n"
"those modules, which fall back to pure Python when this one is missing.");

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

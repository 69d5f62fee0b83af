/* The tree walker of fastcleanup._tree, in C: remove directory trees by
 * descriptor without the GIL.
 *
 * walk_trees(items, stop=None) removes each (dir_fd, name) tree like
 * `rm -r`, iteratively: openat(O_NOFOLLOW|O_DIRECTORY) into a directory,
 * unlinkat() its entries, unlinkat(AT_REMOVEDIR) on the way back. A
 * directory swapped for a symlink or a file is unlinked as one, never
 * followed; an entry that cannot go is noted and the walk goes on. At most
 * HELD directories of one walk are open at once: a deeper ancestor is
 * closed and, on the way back up, reopened through "..", its device and
 * inode checked against what the walk saw, or else from the tree's top one
 * name at a time. fastcleanup/_tree.py holds the pure-Python twin (the
 * same steps in the same order) and the meaning of the results.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HELD 64         /* directories of one walk open at once */
#define NAMED 5         /* failures named by path; the rest are counted */
#define YIELD_EVERY 32  /* entries between sched_yield(): see _cbulk.c */
#define OPEN_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

typedef struct {
    DIR *dir;     /* NULL while closed (beyond the HELD deepest) */
    dev_t dev;
    ino_t ino;    /* as fstat() saw it when the walk entered */
    char *name;   /* its name in its parent; "" for the top */
    int failed;   /* something beneath could not be removed */
} frame_t;

/* Inodes of entries that failed: a reopened directory is read again from
 * its start, and must pass them by rather than fail them twice. */
typedef struct {
    ino_t *slot;  /* 0 marks a free slot */
    size_t cap, used;
} inoset_t;

typedef struct {
    const char *name;          /* the tree, relative to dir_fd */
    int dir_fd;
    int failed;                /* entries that could not be removed */
    int named;
    char *path[NAMED];         /* relative to the tree; "" is the tree itself */
    int err[NAMED];
    int refilled;              /* a directory was not empty though nothing failed in it */
    int stopped;
} tree_t;

typedef struct {
    frame_t *f;
    size_t depth, cap;         /* f[0] .. f[depth - 1] */
    inoset_t skip;
    tree_t *t;
    const volatile int64_t *stop;
    unsigned long entries;
} walk_t;

static int
inoset_has(const inoset_t *s, ino_t ino)
{
    if (s->used == 0 || ino == 0) {
        return 0;
    }
    for (size_t i = (size_t)ino & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->slot[i] == ino) {
            return 1;
        }
        if (s->slot[i] == 0) {
            return 0;
        }
    }
}

static void
inoset_add(inoset_t *s, ino_t ino)
{
    if (ino == 0 || inoset_has(s, ino)) {
        return;
    }
    if ((s->used + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        ino_t *slot = calloc(cap, sizeof(ino_t));
        if (slot == NULL) {
            return; /* out of memory: a reread may name it twice, no worse */
        }
        for (size_t i = 0; i < s->cap; i++) {
            if (s->slot[i] != 0) {
                size_t j = (size_t)s->slot[i] & (cap - 1);
                while (slot[j] != 0) {
                    j = (j + 1) & (cap - 1);
                }
                slot[j] = s->slot[i];
            }
        }
        free(s->slot);
        s->slot = slot;
        s->cap = cap;
    }
    size_t i = (size_t)ino & (s->cap - 1);
    while (s->slot[i] != 0) {
        i = (i + 1) & (s->cap - 1);
    }
    s->slot[i] = ino;
    s->used++;
}

/* The path of `name` in the deepest directory, relative to the tree. */
static char *
path_of(walk_t *w, const char *name)
{
    size_t len = 1;
    for (size_t d = 1; d < w->depth; d++) {
        len += strlen(w->f[d].name) + 1;
    }
    len += name ? strlen(name) + 1 : 0;
    char *out = malloc(len), *p = out;
    if (out == NULL) {
        return NULL;
    }
    for (size_t d = 1; d < w->depth; d++) {
        size_t n = strlen(w->f[d].name);
        if (p != out) {
            *p++ = '/';
        }
        memcpy(p, w->f[d].name, n);
        p += n;
    }
    if (name != NULL) {
        if (p != out) {
            *p++ = '/';
        }
        memcpy(p, name, strlen(name));
        p += strlen(name);
    }
    *p = '\0';
    return out;
}

static void
note(walk_t *w, const char *name, int err)
{
    tree_t *t = w->t;
    if (t->named < NAMED) {
        t->path[t->named] = path_of(w, name);
        t->err[t->named] = err;
        t->named++;
    }
    t->failed++;
}

/* Enter directory `fd` (an entry of the deepest one, or the top). */
static int
push(walk_t *w, int fd, const char *name)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return err;
    }
    if (w->depth > 0 && st.st_dev != w->f[0].dev) {
        close(fd);
        return EXDEV; /* a mount point: the caller tries rmdir, which says EBUSY */
    }
    if (w->depth == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        frame_t *f = realloc(w->f, cap * sizeof(frame_t));
        if (f == NULL) {
            close(fd);
            return ENOMEM;
        }
        w->f = f;
        w->cap = cap;
    }
    DIR *dir = fdopendir(fd);
    char *copy = strdup(name);
    if (dir == NULL || copy == NULL) {
        int err = dir == NULL ? errno : ENOMEM;
        if (dir != NULL) {
            closedir(dir);
        }
        else {
            close(fd);
        }
        free(copy);
        return err;
    }
    frame_t *f = &w->f[w->depth++];
    f->dir = dir;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->name = copy;
    f->failed = 0;
    /* Keep the top and the HELD - 1 deepest open: the rest are reopened on
     * the way back. */
    if (w->depth > HELD) {
        frame_t *old = &w->f[w->depth - HELD];
        if (old->dir != NULL && w->depth - HELD > 0) {
            closedir(old->dir);
            old->dir = NULL;
        }
    }
    return 0;
}

static int
same(int fd, const frame_t *f)
{
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino;
}

/* Reopen f[d], closed: through ".." of f[d + 1] while that is open, else
 * (or if it leads elsewhere) down from the nearest open ancestor. */
static int
reopen(walk_t *w, size_t d)
{
    int fd = -1;
    if (d + 1 < w->depth && w->f[d + 1].dir != NULL) {
        fd = openat(dirfd(w->f[d + 1].dir), "..", OPEN_FLAGS);
    }
    if (fd >= 0 && !same(fd, &w->f[d])) {
        close(fd); /* the child was moved: come down from the top instead */
        fd = -1;
    }
    if (fd < 0) {
        size_t top = d;
        while (w->f[top].dir == NULL) {
            top--; /* f[0] is never closed */
        }
        fd = dup(dirfd(w->f[top].dir));
        for (size_t k = top + 1; fd >= 0 && k <= d; k++) {
            int next = openat(fd, w->f[k].name, OPEN_FLAGS);
            close(fd);
            fd = next;
            if (fd >= 0 && !same(fd, &w->f[k])) {
                close(fd);
                fd = -1;
            }
        }
        if (fd < 0) {
            return ESTALE; /* no longer where the walk left it */
        }
    }
    w->f[d].dir = fdopendir(fd);
    if (w->f[d].dir == NULL) {
        int err = errno;
        close(fd);
        return err;
    }
    return 0;
}

/* An entry that is a directory, or was when read: walk into it. */
static void
enter(walk_t *w, const char *name, ino_t ino)
{
    int parent = dirfd(w->f[w->depth - 1].dir);
    int fd = openat(parent, name, OPEN_FLAGS);
    int err = 0;
    if (fd < 0) {
        err = errno;
        if (err == ENOENT) {
            return;
        }
        if (err == ENOTDIR || err == ELOOP) {
            /* Swapped for a file or a symlink since it was read: unlink that. */
            if (unlinkat(parent, name, 0) == 0 || errno == ENOENT) {
                return;
            }
            err = errno;
        }
    }
    else if ((err = push(w, fd, name)) == 0) {
        return;
    }
    /* Not to be entered (no permission, a mount point, no descriptor left):
     * it may still be an empty directory. */
    if (unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno == ENOENT) {
        return;
    }
    if (errno == EBUSY || err == EXDEV) {
        err = errno;
    }
    note(w, name, err);
    w->f[w->depth - 1].failed = 1;
    inoset_add(&w->skip, ino);
}

/* Leave the deepest directory: read to its end, remove it from its parent. */
static void
leave(walk_t *w)
{
    frame_t *f = &w->f[w->depth - 1];
    tree_t *t = w->t;
    int err = 0;
    if (w->depth == 1) {
        closedir(f->dir);
        f->dir = NULL;
        if (unlinkat(t->dir_fd, t->name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
            err = errno;
        }
    }
    else {
        frame_t *up = &w->f[w->depth - 2];
        if (up->dir == NULL && (err = reopen(w, w->depth - 2)) != 0) {
            /* The way back is gone (moved away, or no descriptor): what is
             * below now lies elsewhere, and the parent is failed. */
            closedir(f->dir);
            f->dir = NULL;
            w->depth--;
            note(w, NULL, err);
            up->failed = 1;
            free(f->name);
            return;
        }
        closedir(f->dir);
        f->dir = NULL;
        if (unlinkat(dirfd(up->dir), f->name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
            err = errno;
            /* Swapped for a symlink or a file while the walk was inside:
             * the walk emptied the directory it entered; the name goes. */
            if (err == ENOTDIR && (unlinkat(dirfd(up->dir), f->name, 0) == 0 || errno == ENOENT)) {
                err = 0;
            }
        }
        if (err != 0 || f->failed) {
            up->failed = 1;
            inoset_add(&w->skip, f->ino);
        }
    }
    w->depth--;
    if (err == ENOTEMPTY && !f->failed) {
        t->refilled = 1; /* entries came after they were read: a live writer */
    }
    else if (err != 0 && !(err == ENOTEMPTY && f->failed)) {
        note(w, f->name, err);
    }
    free(f->name);
}

static void
walk_one(tree_t *t, const volatile int64_t *stop)
{
    walk_t w = {.t = t, .stop = stop};
    int fd = openat(t->dir_fd, t->name, OPEN_FLAGS);
    if (fd < 0) {
        int err = errno;
        struct stat st;
        if (err == ENOENT) {
            return;
        }
        if (err == ENOTDIR || err == ELOOP) {
            if (fstatat(t->dir_fd, t->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(st.st_mode)) {
                /* The tree's own name is a symlink: it loses the link only. */
                if (unlinkat(t->dir_fd, t->name, 0) == 0 || errno == ENOENT) {
                    return;
                }
                err = errno;
            }
            else {
                err = errno == ENOENT ? 0 : ENOTDIR;
            }
        }
        else if (unlinkat(t->dir_fd, t->name, AT_REMOVEDIR) == 0 || errno == ENOENT) {
            return; /* an empty directory it may not read */
        }
        if (err != 0) {
            note(&w, NULL, err);
        }
        return;
    }
    int err = push(&w, fd, "");
    if (err != 0) {
        note(&w, NULL, err);
        return;
    }
    while (w.depth > 0) {
        frame_t *f = &w.f[w.depth - 1];
        if (f->dir == NULL && reopen(&w, w.depth - 1) != 0) {
            /* Lost (leave() could not come back to it, and named it): what
             * is left of it lies out of the walk's reach now. */
            w.f[w.depth - 2].failed = 1;
            free(f->name);
            w.depth--;
            continue;
        }
        errno = 0;
        struct dirent *ent = readdir(f->dir);
        if (ent == NULL) {
            if (errno != 0) {
                note(&w, NULL, errno);
                f->failed = 1;
            }
            leave(&w);
            continue;
        }
        const char *name = ent->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) {
            continue;
        }
        if (inoset_has(&w.skip, ent->d_ino)) {
            continue;
        }
        if (stop != NULL && __atomic_load_n(stop, __ATOMIC_ACQUIRE) != 0) {
            t->stopped = 1;
            break;
        }
        if (++w.entries % YIELD_EVERY == 0) {
            sched_yield();
        }
        if (ent->d_type == DT_DIR) {
            enter(&w, name, ent->d_ino);
            continue;
        }
        if (unlinkat(dirfd(f->dir), name, 0) == 0 || errno == ENOENT) {
            continue;
        }
        if (errno == EISDIR || errno == EPERM) {
            /* A directory after all (no d_type here, or swapped in), or a
             * file that may not go: enter() tells them apart. */
            int first = errno;
            struct stat st;
            if (fstatat(dirfd(f->dir), name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISDIR(st.st_mode)) {
                enter(&w, name, ent->d_ino);
                continue;
            }
            errno = first;
        }
        note(&w, name, errno);
        f->failed = 1;
        inoset_add(&w.skip, ent->d_ino);
    }
    while (w.depth > 0) { /* stopped */
        frame_t *f = &w.f[--w.depth];
        if (f->dir != NULL) {
            closedir(f->dir);
        }
        free(f->name);
    }
    free(w.f);
    free(w.skip.slot);
    /* Gone means gone now: a writer may have made it again since. */
    struct stat st;
    if (!t->stopped && t->failed == 0 &&
        fstatat(t->dir_fd, t->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        t->refilled = 1;
    }
}

PyDoc_STRVAR(walk_trees_doc,
"walk_trees(items, stop=None) -> list[tuple[int, list[tuple[str, int]], bool]]\n"
"\n"
"Remove each (dir_fd, name) tree of items, without the GIL; see\n"
"fastcleanup._tree.pure_walk_trees for the results. A nonzero stop[0]\n"
"(an array('q')) ends the walk before its next entry.");

static PyObject *
walk_trees(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"items", "stop", NULL};
    PyObject *items, *stop_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:walk_trees", kwlist, &items,
                                     &stop_obj)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(items, "items must be a sequence of (dir_fd, name)");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer view = {0};
    const volatile int64_t *stop = NULL;
    PyObject *holders = PyTuple_New(n), *out = NULL;
    tree_t *trees = PyMem_Calloc((size_t)(n ? n : 1), sizeof(tree_t));
    if (holders == NULL || trees == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (stop_obj != Py_None) {
        if (PyObject_GetBuffer(stop_obj, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
            goto done;
        }
        if (view.itemsize != 8 || view.len < 8) {
            PyErr_SetString(PyExc_ValueError, "stop must be an array('q') of one item or more");
            goto done;
        }
        stop = (const volatile int64_t *)view.buf;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k), *bytes = NULL;
        int fd;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "each item must be a (dir_fd, name) tuple");
            goto done;
        }
        long value = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        if (value == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (value < INT_MIN || value > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "dir_fd is out of range for a file descriptor");
            goto done;
        }
        fd = (int)value;
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(item, 1), &bytes)) {
            goto done;
        }
        PyTuple_SET_ITEM(holders, k, bytes);
        if ((size_t)PyBytes_GET_SIZE(bytes) != strlen(PyBytes_AS_STRING(bytes))) {
            PyErr_SetString(PyExc_ValueError, "a tree's name holds a NUL byte");
            goto done;
        }
        trees[k].name = PyBytes_AS_STRING(bytes);
        trees[k].dir_fd = fd;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        if (stop != NULL && __atomic_load_n(stop, __ATOMIC_ACQUIRE) != 0) {
            trees[k].stopped = 1;
            continue;
        }
        walk_one(&trees[k], stop);
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    for (Py_ssize_t k = 0; out != NULL && k < n; k++) {
        tree_t *t = &trees[k];
        PyObject *named = PyList_New(t->named);
        for (int i = 0; named != NULL && i < t->named; i++) {
            PyObject *pair = Py_BuildValue("(O&i)", PyUnicode_DecodeFSDefault,
                                           t->path[i] ? t->path[i] : "?", t->err[i]);
            if (pair == NULL) {
                Py_CLEAR(named);
                break;
            }
            PyList_SET_ITEM(named, i, pair);
        }
        PyObject *result =
            named == NULL ? NULL
                          : Py_BuildValue("(iNOO)", t->failed, named,
                                          t->refilled ? Py_True : Py_False,
                                          t->stopped ? Py_True : Py_False);
        if (result == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, result);
    }
done:
    if (trees != NULL) {
        for (Py_ssize_t k = 0; k < n; k++) {
            for (int i = 0; i < trees[k].named; i++) {
                free(trees[k].path[i]);
            }
        }
    }
    PyMem_Free(trees);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(holders);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef tree_methods[] = {
    {"walk_trees", (PyCFunction)(void (*)(void))walk_trees, METH_VARARGS | METH_KEYWORDS,
     walk_trees_doc},
    {NULL, NULL, 0, NULL},
};

int
add_tree_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, tree_methods);
}

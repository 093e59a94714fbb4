// reimage_native: the few Linux POSIX calls that Node's fs module lacks, for the
// OS-image capture/apply engine (extended attributes, device nodes, nanosecond
// timestamps, sparse-file data segments), and scanDir, which reads a whole
// directory (names, lstat, symlink targets, xattrs) in one call for tree walks.
// Also cdcChunks: the FastCDC cut-point search of src/content/chunker.ts in C.
//
// Conventions:
// - Every function is synchronous and operates on raw bytes: paths and xattr
//   names arrive as Buffers (the TypeScript wrapper in src/image/posix.ts turns
//   strings into UTF-8 Buffers and validates numbers before calling in).
// - Failures throw an Error shaped like Node's fs errors: .code ('ENOENT'),
//   .errno (negative), .syscall, .path and the message
//   "ENOENT: no such file or directory, lgetxattr '/x'".
// - The module keeps no mutable global state and is registered with
//   NAPI_MODULE_INIT, so it is context-aware and can be loaded in several
//   worker_threads at once. Per-instance state (the FastCDC gear table) lives
//   in Node-API instance data, one copy per environment (main thread/worker).

#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
// BigInt support needs Node-API 6; 8 is what every Node >= 12.22 / 14.17 offers.
#define NAPI_VERSION 8

#include <node_api.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef XATTR_NAME_MAX
#define XATTR_NAME_MAX 255
#endif

// How often an xattr read is retried when the list/value grows between the
// size probe and the read (ERANGE). Bounded so a file whose attributes are
// rewritten continuously cannot spin us forever; after that we report ERANGE.
#define XATTR_MAX_ATTEMPTS 8

// ---------------------------------------------------------------------------
// Errors

// errno -> symbolic name. Aliases (ENOTSUP/EOPNOTSUPP, EAGAIN/EWOULDBLOCK,
// EDEADLK/EDEADLOCK) share a number; the first entry wins, and the order here
// matches the names Node/libuv report (ENOTSUP, EAGAIN, EDEADLK).
#define E(name) {name, #name}
static const struct {
  int num;
  const char *name;
} kErrnoNames[] = {
    E(EPERM),        E(ENOENT),          E(ESRCH),           E(EINTR),
    E(EIO),          E(ENXIO),           E(E2BIG),           E(ENOEXEC),
    E(EBADF),        E(ECHILD),          E(EAGAIN),          E(ENOMEM),
    E(EACCES),       E(EFAULT),          E(ENOTBLK),         E(EBUSY),
    E(EEXIST),       E(EXDEV),           E(ENODEV),          E(ENOTDIR),
    E(EISDIR),       E(EINVAL),          E(ENFILE),          E(EMFILE),
    E(ENOTTY),       E(ETXTBSY),         E(EFBIG),           E(ENOSPC),
    E(ESPIPE),       E(EROFS),           E(EMLINK),          E(EPIPE),
    E(EDOM),         E(ERANGE),          E(EDEADLK),         E(ENAMETOOLONG),
    E(ENOLCK),       E(ENOSYS),          E(ENOTEMPTY),       E(ELOOP),
    E(ENOMSG),       E(EIDRM),           E(ECHRNG),          E(EL2NSYNC),
    E(EL3HLT),       E(EL3RST),          E(ELNRNG),          E(EUNATCH),
    E(ENOCSI),       E(EL2HLT),          E(EBADE),           E(EBADR),
    E(EXFULL),       E(ENOANO),          E(EBADRQC),         E(EBADSLT),
    E(EBFONT),       E(ENOSTR),          E(ENODATA),         E(ETIME),
    E(ENOSR),        E(ENONET),          E(ENOPKG),          E(EREMOTE),
    E(ENOLINK),      E(EADV),            E(ESRMNT),          E(ECOMM),
    E(EPROTO),       E(EMULTIHOP),       E(EDOTDOT),         E(EBADMSG),
    E(EOVERFLOW),    E(ENOTUNIQ),        E(EBADFD),          E(EREMCHG),
    E(ELIBACC),      E(ELIBBAD),         E(ELIBSCN),         E(ELIBMAX),
    E(ELIBEXEC),     E(EILSEQ),          E(ERESTART),        E(ESTRPIPE),
    E(EUSERS),       E(ENOTSOCK),        E(EDESTADDRREQ),    E(EMSGSIZE),
    E(EPROTOTYPE),   E(ENOPROTOOPT),     E(EPROTONOSUPPORT), E(ESOCKTNOSUPPORT),
    E(ENOTSUP),      E(EOPNOTSUPP),      E(EPFNOSUPPORT),    E(EAFNOSUPPORT),
    E(EADDRINUSE),   E(EADDRNOTAVAIL),   E(ENETDOWN),        E(ENETUNREACH),
    E(ENETRESET),    E(ECONNABORTED),    E(ECONNRESET),      E(ENOBUFS),
    E(EISCONN),      E(ENOTCONN),        E(ESHUTDOWN),       E(ETOOMANYREFS),
    E(ETIMEDOUT),    E(ECONNREFUSED),    E(EHOSTDOWN),       E(EHOSTUNREACH),
    E(EALREADY),     E(EINPROGRESS),     E(ESTALE),          E(EUCLEAN),
    E(ENOTNAM),      E(ENAVAIL),         E(EISNAM),          E(EREMOTEIO),
    E(EDQUOT),       E(ENOMEDIUM),       E(EMEDIUMTYPE),     E(ECANCELED),
    E(ENOKEY),       E(EKEYEXPIRED),     E(EKEYREVOKED),     E(EKEYREJECTED),
    E(EOWNERDEAD),   E(ENOTRECOVERABLE),
#ifdef ERFKILL
    E(ERFKILL),
#endif
#ifdef EHWPOISON
    E(EHWPOISON),
#endif
};
#undef E

static const char *errno_name(int err) {
  for (size_t i = 0; i < sizeof(kErrnoNames) / sizeof(kErrnoNames[0]); i++) {
    if (kErrnoNames[i].num == err) return kErrnoNames[i].name;
  }
  return "UNKNOWN";
}

// Thread-safe strerror (plain strerror may use a shared static buffer, and we
// run on worker threads). glibc with _GNU_SOURCE has the char*-returning
// variant; other libcs (musl) have the XSI int-returning one.
static const char *errno_text(int err, char *buf, size_t len) {
#if defined(__GLIBC__)
  return strerror_r(err, buf, len);
#else
  if (strerror_r(err, buf, len) != 0) snprintf(buf, len, "Unknown error %d", err);
  return buf;
#endif
}

// Throws `TypeError`/`Error` for an N-API failure unless one is already
// pending (e.g. a getter threw). Returns false so callers can `return NULL`.
static bool napi_fail(napi_env env, napi_status status) {
  // Must be read before any other N-API call overwrites the last-error slot.
  const napi_extended_error_info *info = NULL;
  const char *msg = "Node-API call failed";
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL &&
      info->error_message != NULL) {
    msg = info->error_message;
  }
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return false;
  switch (status) {
    case napi_object_expected:
    case napi_string_expected:
    case napi_number_expected:
    case napi_boolean_expected:
    case napi_array_expected:
    case napi_bigint_expected:
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
      break;
    default:
      napi_throw_error(env, "ERR_NAPI", msg);
      break;
  }
  return false;
}

// Evaluates an N-API call; on failure throws and returns NULL from the caller.
#define CHECK(call)                                            \
  do {                                                         \
    napi_status check_status_ = (call);                        \
    if (check_status_ != napi_ok) {                            \
      napi_fail(env, check_status_);                           \
      return NULL;                                             \
    }                                                          \
  } while (0)

// Same, for functions that must release memory: jumps to `fail`.
#define CHECK_GOTO(call)                                       \
  do {                                                         \
    napi_status check_status_ = (call);                        \
    if (check_status_ != napi_ok) {                            \
      napi_fail(env, check_status_);                           \
      goto fail;                                               \
    }                                                          \
  } while (0)

static bool set_prop(napi_env env, napi_value obj, const char *key, napi_value value) {
  napi_status st = napi_set_named_property(env, obj, key, value);
  return st == napi_ok || napi_fail(env, st);
}

// Throws a Node-style system error. `path` (raw bytes, may be NULL) is
// rendered as UTF-8; invalid sequences become U+FFFD, which is what we want
// for a diagnostic string (the bytes themselves are what the caller passed).
// Always returns NULL so callers can `return throw_errno(...)`.
static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path,
                              size_t path_len) {
  char text_buf[256];
  const char *text = errno_text(err, text_buf, sizeof(text_buf));
  const char *code = errno_name(err);

  // Node/libuv messages are lower case ("no such file or directory"); glibc's
  // are capitalised. Lower the first letter unless it starts an acronym ("I/O").
  char lowered[256];
  snprintf(lowered, sizeof(lowered), "%s", text);
  if (lowered[0] >= 'A' && lowered[0] <= 'Z' && lowered[1] >= 'a' && lowered[1] <= 'z') {
    lowered[0] = (char)(lowered[0] - 'A' + 'a');
  }

  size_t cap = strlen(code) + strlen(lowered) + strlen(syscall) + path_len + 16;
  char *msg = malloc(cap);
  if (msg == NULL) {
    napi_throw_error(env, code, lowered);
    return NULL;
  }
  int n;
  if (path != NULL) {
    n = snprintf(msg, cap, "%s: %s, %s '%.*s'", code, lowered, syscall, (int)path_len, path);
  } else {
    n = snprintf(msg, cap, "%s: %s, %s", code, lowered, syscall);
  }
  if (n < 0) n = 0;  // cannot happen with these formats; keeps the length sane

  napi_value js_code, js_msg, error, js_errno, js_syscall, js_path;
  napi_status st;
  if ((st = napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &js_code)) != napi_ok ||
      (st = napi_create_string_utf8(env, msg, (size_t)n, &js_msg)) != napi_ok ||
      (st = napi_create_error(env, js_code, js_msg, &error)) != napi_ok ||
      (st = napi_create_int32(env, -err, &js_errno)) != napi_ok ||
      (st = napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &js_syscall)) != napi_ok) {
    free(msg);
    napi_fail(env, st);
    return NULL;
  }
  free(msg);
  if (!set_prop(env, error, "errno", js_errno) || !set_prop(env, error, "syscall", js_syscall)) {
    return NULL;
  }
  if (path != NULL) {
    if ((st = napi_create_string_utf8(env, path, path_len, &js_path)) != napi_ok) {
      napi_fail(env, st);
      return NULL;
    }
    if (!set_prop(env, error, "path", js_path)) return NULL;
  }
  napi_throw(env, error);
  return NULL;
}

// ---------------------------------------------------------------------------
// Argument helpers

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  napi_status st = napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (st != napi_ok) return napi_fail(env, st);
  if (argc < want) {
    char msg[64];
    snprintf(msg, sizeof(msg), "expected %zu arguments, got %zu", want, argc);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", msg);
    return false;
  }
  return true;
}

// Borrows the bytes of a Buffer argument (no copy).
static bool get_bytes(napi_env env, napi_value value, const char *what, const char **data,
                      size_t *len) {
  bool is_buffer = false;
  napi_status st = napi_is_buffer(env, value, &is_buffer);
  if (st != napi_ok) return napi_fail(env, st);
  if (!is_buffer) {
    char msg[64];
    snprintf(msg, sizeof(msg), "%s must be a Buffer", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  void *ptr = NULL;
  st = napi_get_buffer_info(env, value, &ptr, len);
  if (st != napi_ok) return napi_fail(env, st);
  // An empty Buffer may report a NULL pointer; give callers something valid.
  *data = (*len == 0 || ptr == NULL) ? "" : (const char *)ptr;
  return true;
}

// Copies a Buffer argument into a NUL-terminated C string of at most cap-1
// bytes. Embedded NULs are rejected (the kernel would silently cut the string
// there and act on a different file/attribute than the caller named).
// Over-long input is reported as `too_long_errno` from `syscall`, which is
// exactly what the kernel would have answered.
static bool get_cstr(napi_env env, napi_value value, const char *what, char *out, size_t cap,
                     int too_long_errno, const char *syscall, const char *path,
                     size_t path_len) {
  const char *data = NULL;
  size_t len = 0;
  if (!get_bytes(env, value, what, &data, &len)) return false;
  if (memchr(data, '\0', len) != NULL) {
    char msg[64];
    snprintf(msg, sizeof(msg), "%s must not contain null bytes", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", msg);
    return false;
  }
  if (len >= cap) {
    // For a path argument, report the (truncated-to-nothing) path itself.
    if (path == NULL) {
      path = data;
      path_len = len;
    }
    throw_errno(env, too_long_errno, syscall, path, path_len);
    return false;
  }
  memcpy(out, data, len);
  out[len] = '\0';
  return true;
}

// PATH_MAX counts the terminating NUL; longer paths get ENAMETOOLONG from the
// kernel, so a fixed buffer loses nothing.
typedef struct {
  char str[PATH_MAX];
} cpath;

static bool get_path(napi_env env, napi_value value, cpath *out, const char *syscall) {
  return get_cstr(env, value, "path", out->str, sizeof(out->str), ENAMETOOLONG, syscall, NULL,
                  0);
}

static bool get_int32(napi_env env, napi_value value, int32_t *out) {
  napi_status st = napi_get_value_int32(env, value, out);
  return st == napi_ok || napi_fail(env, st);
}

static bool get_uint32(napi_env env, napi_value value, uint32_t *out) {
  napi_status st = napi_get_value_uint32(env, value, out);
  return st == napi_ok || napi_fail(env, st);
}

static bool get_int64(napi_env env, napi_value value, int64_t *out) {
  napi_status st = napi_get_value_int64(env, value, out);
  return st == napi_ok || napi_fail(env, st);
}

// A BigInt nanosecond count since the epoch -> timespec. Negative values (pre
// 1970) are normalised so that tv_nsec is always within [0, 1e9).
static bool get_timespec(napi_env env, napi_value value, struct timespec *out) {
  int64_t ns = 0;
  bool lossless = false;
  napi_status st = napi_get_value_bigint_int64(env, value, &ns, &lossless);
  if (st != napi_ok) return napi_fail(env, st);
  if (!lossless) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "timestamp does not fit in 64-bit nanoseconds");
    return false;
  }
  int64_t sec = ns / 1000000000;
  int64_t rem = ns % 1000000000;
  if (rem < 0) {
    rem += 1000000000;
    sec -= 1;
  }
  out->tv_sec = (time_t)sec;
  out->tv_nsec = (long)rem;
  return true;
}

// ---------------------------------------------------------------------------
// readXattrs(path: Buffer): Array<[name: Buffer, value: Buffer]>

static int compare_names(const void *a, const void *b) {
  // strcmp compares as unsigned char, i.e. by raw bytes.
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// Grows a heap buffer (never shrinks). `*buf` may point at caller stack
// storage `stack`, which is never freed.
static bool grow(char **buf, size_t *cap, size_t need, char *stack) {
  if (need <= *cap) return true;
  char *next = (*buf == stack) ? malloc(need) : realloc(*buf, need);
  if (next == NULL) return false;
  *buf = next;
  *cap = need;
  return true;
}

// Scratch space for reading one file's attributes, reusable across files
// (scanDir reads thousands in a row). Starts on the embedded arrays, so the
// common case — no or few attributes — allocates nothing; grows onto the heap
// when needed and keeps that for the next file. Self-referential: never copy
// one; release with xattr_bufs_free.
typedef struct {
  char *list;
  size_t list_cap;
  char *value;
  size_t value_cap;
  const char **names;
  size_t names_cap;
  char list_stack[1024];
  char value_stack[4096];
  const char *names_stack[64];
} xattr_bufs;

static void xattr_bufs_init(xattr_bufs *b) {
  b->list = b->list_stack;
  b->list_cap = sizeof(b->list_stack);
  b->value = b->value_stack;
  b->value_cap = sizeof(b->value_stack);
  b->names = b->names_stack;
  b->names_cap = sizeof(b->names_stack) / sizeof(b->names_stack[0]);
}

static void xattr_bufs_free(xattr_bufs *b) {
  if (b->list != b->list_stack) free(b->list);
  if (b->value != b->value_stack) free(b->value);
  if (b->names != b->names_stack) free((void *)b->names);
  xattr_bufs_init(b);
}

// Reads all extended attributes of `path` (not following a symlink) into a JS
// array of [name, value] Buffer pairs sorted by raw name bytes. With
// `null_if_none`, a file without attributes yields *out = NULL instead of [].
// Returns 0 on success; an errno value (with *syscall set) when a syscall
// failed; -1 when a JavaScript exception is pending. No xattr support on the
// filesystem (ENOTSUP) means no attributes; attributes removed between the
// list and the read (ENODATA) are skipped.
static int read_xattrs(napi_env env, const char *path, xattr_bufs *b, bool null_if_none,
                       napi_value *out, const char **syscall) {
  *out = NULL;
  *syscall = "llistxattr";
  ssize_t list_len = -1;
  for (int attempt = 0;; attempt++) {
    // Leave one spare byte so the list can always be NUL-terminated below.
    list_len = llistxattr(path, b->list, b->list_cap - 1);
    if (list_len >= 0) break;
    int err = errno;
    if (err == ENOTSUP || err == ENODATA) {
      list_len = 0;  // the filesystem has no xattr support: nothing to read
      break;
    }
    if (err != ERANGE || attempt + 1 >= XATTR_MAX_ATTEMPTS) return err;
    // The list is larger than our buffer (or grew since the last probe).
    ssize_t need = llistxattr(path, NULL, 0);
    if (need < 0) return errno;
    if (!grow(&b->list, &b->list_cap, (size_t)need + 1 + b->list_cap, b->list_stack)) {
      return ENOMEM;
    }
  }
  b->list[list_len] = '\0';

  // Split the NUL-separated list. Each name takes at least 2 bytes ("x\0").
  size_t count = 0;
  size_t max_names = (size_t)list_len / 2 + 1;
  if (max_names > b->names_cap) {
    const char **next = malloc(max_names * sizeof(*next));
    if (next == NULL) return ENOMEM;
    if (b->names != b->names_stack) free((void *)b->names);
    b->names = next;
    b->names_cap = max_names;
  }
  for (size_t off = 0; off < (size_t)list_len;) {
    size_t n = strlen(b->list + off);
    if (n > 0) b->names[count++] = b->list + off;
    off += n + 1;
  }
  if (count > 1) qsort(b->names, count, sizeof(*b->names), compare_names);

  napi_value arr = NULL;
  uint32_t arr_len = 0;
  napi_status st;
  *syscall = "lgetxattr";
  for (size_t i = 0; i < count; i++) {
    const char *name = b->names[i];
    ssize_t value_len = -1;
    for (int attempt = 0;; attempt++) {
      value_len = lgetxattr(path, name, b->value, b->value_cap);
      if (value_len >= 0) break;
      int err = errno;
      if (err == ENODATA) break;  // removed since llistxattr: skip it
      if (err != ERANGE || attempt + 1 >= XATTR_MAX_ATTEMPTS) return err;
      ssize_t need = lgetxattr(path, name, NULL, 0);
      if (need < 0) {
        if (errno == ENODATA) break;
        return errno;
      }
      if (!grow(&b->value, &b->value_cap, (size_t)need + b->value_cap, b->value_stack)) {
        return ENOMEM;
      }
    }
    if (value_len < 0) continue;

    napi_value pair, js_name, js_value;
    if ((arr == NULL && (st = napi_create_array(env, &arr)) != napi_ok) ||
        (st = napi_create_buffer_copy(env, strlen(name), name, NULL, &js_name)) != napi_ok ||
        (st = napi_create_buffer_copy(env, (size_t)value_len, b->value, NULL, &js_value)) !=
            napi_ok ||
        (st = napi_create_array_with_length(env, 2, &pair)) != napi_ok ||
        (st = napi_set_element(env, pair, 0, js_name)) != napi_ok ||
        (st = napi_set_element(env, pair, 1, js_value)) != napi_ok ||
        (st = napi_set_element(env, arr, arr_len++, pair)) != napi_ok) {
      napi_fail(env, st);
      return -1;
    }
  }
  if (arr == NULL && !null_if_none && (st = napi_create_array(env, &arr)) != napi_ok) {
    napi_fail(env, st);
    return -1;
  }
  *out = arr;
  return 0;
}

static napi_value ReadXattrs(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  cpath path;
  if (!get_path(env, argv[0], &path, "llistxattr")) return NULL;

  xattr_bufs bufs;
  xattr_bufs_init(&bufs);
  napi_value out = NULL;
  const char *syscall = NULL;
  int err = read_xattrs(env, path.str, &bufs, false, &out, &syscall);
  xattr_bufs_free(&bufs);
  if (err > 0) return throw_errno(env, err, syscall, path.str, strlen(path.str));
  return err == 0 ? out : NULL;
}

// ---------------------------------------------------------------------------
// setXattr(path: Buffer, name: Buffer, value: Buffer): void

static napi_value SetXattr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  cpath path;
  if (!get_path(env, argv[0], &path, "lsetxattr")) return NULL;
  size_t path_len = strlen(path.str);
  // The kernel rejects names longer than XATTR_NAME_MAX with ERANGE.
  char name[XATTR_NAME_MAX + 1];
  if (!get_cstr(env, argv[1], "name", name, sizeof(name), ERANGE, "lsetxattr", path.str,
                path_len)) {
    return NULL;
  }
  const char *value = NULL;
  size_t value_len = 0;
  if (!get_bytes(env, argv[2], "value", &value, &value_len)) return NULL;
  if (lsetxattr(path.str, name, value, value_len, 0) != 0) {
    return throw_errno(env, errno, "lsetxattr", path.str, path_len);
  }
  return NULL;
}

// ---------------------------------------------------------------------------
// mknod(path: Buffer, type: 'char' | 'block' | 'fifo', perm, major, minor): void

static napi_value Mknod(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  cpath path;
  if (!get_path(env, argv[0], &path, "mknod")) return NULL;
  char type[8];
  size_t type_len = 0;
  CHECK(napi_get_value_string_utf8(env, argv[1], type, sizeof(type), &type_len));
  mode_t fmt;
  // type_len != strlen: an embedded NUL ("char\0x") must not pass as "char".
  if (type_len != strlen(type)) {
    fmt = 0;
  } else if (strcmp(type, "char") == 0) {
    fmt = S_IFCHR;
  } else if (strcmp(type, "block") == 0) {
    fmt = S_IFBLK;
  } else if (strcmp(type, "fifo") == 0) {
    fmt = S_IFIFO;
  } else {
    fmt = 0;
  }
  if (fmt == 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          "type must be 'char', 'block' or 'fifo'");
    return NULL;
  }
  uint32_t perm, major, minor;
  if (!get_uint32(env, argv[2], &perm) || !get_uint32(env, argv[3], &major) ||
      !get_uint32(env, argv[4], &minor)) {
    return NULL;
  }
  // Permission bits only (incl. setuid/setgid/sticky); the type comes from `type`.
  mode_t mode = fmt | (perm & 07777);
  dev_t dev = fmt == S_IFIFO ? 0 : makedev(major, minor);
  if (mknod(path.str, mode, dev) != 0) {
    return throw_errno(env, errno, "mknod", path.str, strlen(path.str));
  }
  return NULL;
}

// ---------------------------------------------------------------------------
// utimensNs(path: Buffer, atimeNs: bigint, mtimeNs: bigint): void
// futimensNs(fd: number, atimeNs: bigint, mtimeNs: bigint): void

static napi_value UtimensNs(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  cpath path;
  if (!get_path(env, argv[0], &path, "utimensat")) return NULL;
  struct timespec ts[2];
  if (!get_timespec(env, argv[1], &ts[0]) || !get_timespec(env, argv[2], &ts[1])) return NULL;
  if (utimensat(AT_FDCWD, path.str, ts, AT_SYMLINK_NOFOLLOW) != 0) {
    return throw_errno(env, errno, "utimensat", path.str, strlen(path.str));
  }
  return NULL;
}

static napi_value FutimensNs(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int32_t fd;
  if (!get_int32(env, argv[0], &fd)) return NULL;
  struct timespec ts[2];
  if (!get_timespec(env, argv[1], &ts[0]) || !get_timespec(env, argv[2], &ts[1])) return NULL;
  if (futimens(fd, ts) != 0) return throw_errno(env, errno, "futimens", NULL, 0);
  return NULL;
}

// ---------------------------------------------------------------------------
// dataSegments(fd: number, size: number): Array<[offset: number, length: number]>

static bool push_segment(napi_env env, napi_value out, uint32_t index, int64_t offset,
                         int64_t length) {
  napi_value pair, js_off, js_len;
  napi_status st;
  if ((st = napi_create_int64(env, offset, &js_off)) != napi_ok ||
      (st = napi_create_int64(env, length, &js_len)) != napi_ok ||
      (st = napi_create_array_with_length(env, 2, &pair)) != napi_ok ||
      (st = napi_set_element(env, pair, 0, js_off)) != napi_ok ||
      (st = napi_set_element(env, pair, 1, js_len)) != napi_ok ||
      (st = napi_set_element(env, out, index, pair)) != napi_ok) {
    return napi_fail(env, st);
  }
  return true;
}

static napi_value DataSegments(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int32_t fd;
  int64_t size;
  if (!get_int32(env, argv[0], &fd) || !get_int64(env, argv[1], &size)) return NULL;
  if (size < 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "size must be >= 0");
    return NULL;
  }

  napi_value out;
  CHECK(napi_create_array(env, &out));
  if (size == 0) return out;

  // SEEK_DATA/SEEK_HOLE move the file offset; put it back afterwards so a
  // caller reading sequentially from the same fd is not surprised.
  off_t saved = lseek(fd, 0, SEEK_CUR);
  if (saved < 0) return throw_errno(env, errno, "lseek", NULL, 0);

  uint32_t count = 0;
  off_t pos = 0;
  int err = 0;
  while (pos < size) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data at or after pos: the rest is a hole
      if (errno == EINVAL && count == 0 && pos == 0) {
        // SEEK_DATA unsupported here: treat the whole file as data.
        if (!push_segment(env, out, count++, 0, size)) goto restore;
        break;
      }
      err = errno;
      break;
    }
    if (data >= size) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      // ENXIO: the file shrank below `data` since SEEK_DATA; nothing more.
      if (errno != ENXIO) err = errno;
      break;
    }
    if (hole > size) hole = size;
    if (!push_segment(env, out, count++, data, hole - data)) goto restore;
    pos = hole;
  }

restore:;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (lseek(fd, saved, SEEK_SET) < 0 && err == 0 && !pending) err = errno;
  if (pending) return NULL;
  if (err != 0) return throw_errno(env, err, "lseek", NULL, 0);
  return out;
}

// ---------------------------------------------------------------------------
// scanDir(dir: Buffer, xattrs: boolean): {
//   names: ArrayBuffer,       // all names back to back, sorted, no separators
//   nameEnds: Uint32Array,    // end offset of each name in `names`
//   stats: BigInt64Array,     // STAT_FIELDS slots per entry
//   targets, xattrs, errors,  // arrays with elements only where there is one
// }
//
// The capture walk's per-directory step in one call: read the names (opendir/
// readdir), sort them by raw bytes, then per entry fstatat(AT_SYMLINK_NOFOLLOW)
// relative to the directory fd, readlinkat for symlinks and, when asked,
// llistxattr/lgetxattr on "dir/name" (built in a reused buffer; there is no
// *at() variant of the xattr calls). Only failing to open or read the
// directory throws; a per-entry failure is reported as that entry's errno code
// so one vanished or unreadable file does not cost the whole directory.
//
// Built for speed: a typical entry costs no N-API call at all. Creating one
// Buffer per name here (napi_create_buffer_copy: malloc + ArrayBuffer +
// Uint8Array + prototype) and setting four array elements per entry cost more
// than the syscalls; the wrapper in posix.ts slices `names` in JS instead and
// fills the holes of the sparse arrays with undefined.

// Layout of an entry's stat slots in the BigInt64Array; must match `ST` in
// src/image/posix.ts. Values are stored like Node's BigIntStats store them
// (int64; an unsigned dev/ino >= 2^63 would read as negative there too).
enum {
  ST_MODE,
  ST_UID,
  ST_GID,
  ST_NLINK,
  ST_SIZE,
  ST_BLOCKS,
  ST_INO,
  ST_DEV,
  ST_RDEV,
  ST_MTIME_NS,
  ST_CTIME_NS,
  STAT_FIELDS
};

// The first size tried for the names arena, and the longest symlink target we
// accept (Linux caps targets at PATH_MAX; this only bounds a pathological
// filesystem that keeps filling whatever buffer we offer).
#define SCAN_ARENA_INITIAL 16384
#define SCAN_LINK_MAX ((size_t)1 << 16)

typedef struct {
  const char *name;  // NUL-terminated, inside the names arena
  size_t len;
} scan_entry;

static int compare_entries(const void *a, const void *b) {
  // Names contain no NUL, so strcmp orders by bytes with a prefix first.
  return strcmp(((const scan_entry *)a)->name, ((const scan_entry *)b)->name);
}

// Reads every name of `d` except "." and ".." into one heap arena of
// NUL-terminated strings, grown by doubling. Returns 0 (the caller frees
// *arena, which is NULL for an empty directory) or an errno value from
// readdir (or ENOMEM), having freed everything. *len_out counts the NULs.
static int read_names(DIR *d, char **arena_out, size_t *len_out, size_t *count_out) {
  char *arena = NULL;
  size_t cap = 0, len = 0, count = 0;
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (de == NULL) {
      if (errno != 0) {
        int err = errno;
        free(arena);
        return err;
      }
      break;
    }
    const char *n = de->d_name;
    if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'))) continue;
    size_t need = strlen(n) + 1;
    if (cap - len < need) {
      size_t next = cap == 0 ? SCAN_ARENA_INITIAL : cap;
      while (next - len < need) {
        if (next > SIZE_MAX / 2) {
          free(arena);
          return ENOMEM;
        }
        next *= 2;
      }
      char *grown = realloc(arena, next);
      if (grown == NULL) {
        free(arena);
        return ENOMEM;
      }
      arena = grown;
      cap = next;
    }
    memcpy(arena + len, n, need);
    len += need;
    count++;
  }
  *arena_out = arena;
  *len_out = len;
  *count_out = count;
  return 0;
}

// Seconds + nanoseconds -> nanoseconds since the epoch. Outside int64 (before
// 1677 or after 2262) it saturates and returns false.
static bool timespec_ns(const struct timespec *ts, int64_t *out) {
  int64_t ns;
  if (__builtin_mul_overflow((int64_t)ts->tv_sec, (int64_t)1000000000, &ns) ||
      __builtin_add_overflow(ns, (int64_t)ts->tv_nsec, &ns)) {
    *out = ts->tv_sec < 0 ? INT64_MIN : INT64_MAX;
    return false;
  }
  *out = ns;
  return true;
}

// State shared by all entries of one scanDir call (all of it on its stack).
typedef struct {
  int dfd;
  bool want_xattrs;
  char *path;          // "dir/" then the current name, for the xattr calls
  size_t prefix_len;   // length of "dir/"
  char *link;          // readlinkat buffer, grown on demand
  size_t link_cap;
  xattr_bufs *bufs;
  int64_t *slots;      // the BigInt64Array's storage
  napi_value targets, xattrs, errors;
} scan_ctx;

// readlinkat into c->link; returns the target length, or -1 with errno set.
// `size_hint` is the link's st_size (0 on some pseudo filesystems).
static ssize_t scan_readlink(scan_ctx *c, const char *name, off_t size_hint) {
  size_t want = 256;
  if (size_hint > 0 && (uint64_t)size_hint < SCAN_LINK_MAX) want = (size_t)size_hint + 1;
  for (;;) {
    if (want > c->link_cap) {
      char *grown = realloc(c->link, want);
      if (grown == NULL) {
        errno = ENOMEM;
        return -1;
      }
      c->link = grown;
      c->link_cap = want;
    }
    ssize_t n = readlinkat(c->dfd, name, c->link, c->link_cap);
    if (n < 0 || (size_t)n < c->link_cap) return n;
    // The buffer is full, so the target may be cut short (it changed since
    // fstatat, or st_size was 0): retry with more room.
    if (c->link_cap >= SCAN_LINK_MAX) {
      errno = ENAMETOOLONG;
      return -1;
    }
    want = c->link_cap * 2;
  }
}

// Fills entry `i`'s stat slots and, where there is one, its element of
// targets/xattrs/errors. Returns false with a JS exception pending on N-API
// failure.
static bool scan_one(napi_env env, scan_ctx *c, uint32_t i, const scan_entry *e) {
  napi_status st;
  int64_t *slot = c->slots + (size_t)i * STAT_FIELDS;
  napi_value target = NULL;
  napi_value xattrs = NULL;
  napi_value error = NULL;
  int err = 0;
  struct stat sb;
  if (fstatat(c->dfd, e->name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
    err = errno;
    memset(slot, 0, STAT_FIELDS * sizeof(*slot));  // mode 0: no file type
  } else {
    slot[ST_MODE] = (int64_t)sb.st_mode;
    slot[ST_UID] = (int64_t)sb.st_uid;
    slot[ST_GID] = (int64_t)sb.st_gid;
    slot[ST_NLINK] = (int64_t)sb.st_nlink;
    slot[ST_SIZE] = (int64_t)sb.st_size;
    slot[ST_BLOCKS] = (int64_t)sb.st_blocks;
    slot[ST_INO] = (int64_t)sb.st_ino;
    slot[ST_DEV] = (int64_t)sb.st_dev;
    slot[ST_RDEV] = (int64_t)sb.st_rdev;
    bool times_fit = timespec_ns(&sb.st_mtim, &slot[ST_MTIME_NS]);
    times_fit = timespec_ns(&sb.st_ctim, &slot[ST_CTIME_NS]) && times_fit;

    if (S_ISLNK(sb.st_mode)) {
      ssize_t n = scan_readlink(c, e->name, sb.st_size);
      if (n < 0) {
        err = errno;
      } else if ((st = napi_create_buffer_copy(env, (size_t)n, c->link, NULL, &target)) !=
                 napi_ok) {
        return napi_fail(env, st);
      }
    }
    if (err == 0 && c->want_xattrs) {
      if (c->prefix_len + e->len >= PATH_MAX) {
        err = ENAMETOOLONG;  // what llistxattr would say
      } else {
        memcpy(c->path + c->prefix_len, e->name, e->len + 1);
        const char *syscall = NULL;
        int rc = read_xattrs(env, c->path, c->bufs, true, &xattrs, &syscall);
        if (rc < 0) return false;
        if (rc > 0) err = rc;
      }
    }
    // Report a timestamp Node could show but int64 nanoseconds cannot.
    if (err == 0 && !times_fit) err = EOVERFLOW;
  }
  if (err != 0 &&
      (st = napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &error)) != napi_ok) {
    return napi_fail(env, st);
  }
  if ((target != NULL && (st = napi_set_element(env, c->targets, i, target)) != napi_ok) ||
      (xattrs != NULL && (st = napi_set_element(env, c->xattrs, i, xattrs)) != napi_ok) ||
      (error != NULL && (st = napi_set_element(env, c->errors, i, error)) != napi_ok)) {
    return napi_fail(env, st);
  }
  return true;
}

// Entries per handle scope: bounds the handles of a 100k-entry directory's
// temporaries without paying for a scope per entry.
#define SCAN_SCOPE_ENTRIES 256

static napi_value ScanDir(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  cpath path;
  if (!get_path(env, argv[0], &path, "opendir")) return NULL;
  bool want_xattrs = true;
  CHECK(napi_get_value_bool(env, argv[1], &want_xattrs));
  size_t dir_len = strlen(path.str);

  DIR *d = opendir(path.str);
  if (d == NULL) return throw_errno(env, errno, "opendir", path.str, dir_len);
  char *arena = NULL;
  size_t arena_len = 0, count = 0;
  int err = read_names(d, &arena, &arena_len, &count);
  if (err != 0) {
    closedir(d);
    return throw_errno(env, err, "readdir", path.str, dir_len);
  }

  scan_entry *ents = NULL;
  xattr_bufs bufs;
  xattr_bufs_init(&bufs);
  scan_ctx c = {
      .dfd = dirfd(d),
      .want_xattrs = want_xattrs,
      .path = path.str,
      .bufs = &bufs,
  };
  napi_value result = NULL;

  // JS arrays and typed arrays are indexed by uint32, and so is nameEnds.
  if (count > UINT32_MAX / STAT_FIELDS || arena_len > UINT32_MAX) {
    throw_errno(env, EOVERFLOW, "readdir", path.str, dir_len);
    goto fail;
  }
  if (count > 0) {
    ents = malloc(count * sizeof(*ents));
    if (ents == NULL) {
      throw_errno(env, ENOMEM, "readdir", path.str, dir_len);
      goto fail;
    }
    const char *p = arena;
    for (size_t i = 0; i < count; i++) {
      ents[i].name = p;
      ents[i].len = strlen(p);
      p += ents[i].len + 1;
    }
    qsort(ents, count, sizeof(*ents), compare_entries);
  }

  // "dir/" once; each entry's name is copied after it. The directory path is
  // below PATH_MAX, so the separator still fits (it replaces the NUL; error
  // messages above pass dir_len explicitly).
  c.prefix_len = dir_len;
  if (dir_len == 0 || path.str[dir_len - 1] != '/') path.str[c.prefix_len++] = '/';

  // The names, back to back in sorted order, and where each one ends.
  void *data = NULL;
  napi_value names, ends_buffer, name_ends;
  CHECK_GOTO(napi_create_arraybuffer(env, arena_len - count, &data, &names));
  char *name_bytes = data;
  CHECK_GOTO(napi_create_arraybuffer(env, count * sizeof(uint32_t), &data, &ends_buffer));
  uint32_t *ends = data;
  CHECK_GOTO(napi_create_typedarray(env, napi_uint32_array, count, ends_buffer, 0, &name_ends));
  size_t name_off = 0;
  for (size_t i = 0; i < count; i++) {
    memcpy(name_bytes + name_off, ents[i].name, ents[i].len);
    name_off += ents[i].len;
    ends[i] = (uint32_t)name_off;
  }

  napi_value stats_buffer, stats;
  size_t slots = count * STAT_FIELDS;
  CHECK_GOTO(napi_create_arraybuffer(env, slots * sizeof(int64_t), &data, &stats_buffer));
  c.slots = data;
  CHECK_GOTO(napi_create_typedarray(env, napi_bigint64_array, slots, stats_buffer, 0, &stats));
  CHECK_GOTO(napi_create_array_with_length(env, count, &c.targets));
  CHECK_GOTO(napi_create_array_with_length(env, count, &c.xattrs));
  CHECK_GOTO(napi_create_array_with_length(env, count, &c.errors));

  for (size_t i = 0; i < count;) {
    napi_handle_scope scope;
    CHECK_GOTO(napi_open_handle_scope(env, &scope));
    bool ok = true;
    for (size_t stop = i + SCAN_SCOPE_ENTRIES; ok && i < count && i < stop; i++) {
      ok = scan_one(env, &c, (uint32_t)i, &ents[i]);
    }
    napi_status st = napi_close_handle_scope(env, scope);
    if (!ok) goto fail;
    if (st != napi_ok) {
      napi_fail(env, st);
      goto fail;
    }
  }

  napi_value out;
  CHECK_GOTO(napi_create_object(env, &out));
  if (!set_prop(env, out, "names", names) || !set_prop(env, out, "nameEnds", name_ends) ||
      !set_prop(env, out, "stats", stats) || !set_prop(env, out, "targets", c.targets) ||
      !set_prop(env, out, "xattrs", c.xattrs) || !set_prop(env, out, "errors", c.errors)) {
    goto fail;
  }
  result = out;

fail:
  closedir(d);
  free(arena);
  free(ents);
  free(c.link);
  xattr_bufs_free(&bufs);
  return result;
}

// ---------------------------------------------------------------------------
// FastCDC: cdcInit(gear: Int32Array(256)), cdcChunks(data, start, end, final, out)
//
// Byte-for-byte the cut points of cutPoint() in src/content/chunker.ts, which
// is the reference (the gear table and these parameters are part of the image
// format v1; posix.test.ts checks the two agree). The gear table is not
// recomputed here (it comes from SHA-256): JavaScript hands it over once per
// environment with cdcInit, and it is kept in the addon's instance data.

#define CDC_MIN (16u * 1024)
#define CDC_AVG (64u * 1024)
#define CDC_MAX (256u * 1024)
// Applied to the 32-bit hash. JS computes h = ((h << 1) + gear[b]) | 0 on
// int32; uint32 arithmetic here wraps identically and has the same bits.
#define CDC_MASK_S 0xffffc000u  // before CHUNK_AVG: 18 bits must be zero
#define CDC_MASK_L 0xfffc0000u  // after it: 14 bits

// Per-environment state, owned by Node-API instance data (freed with the env).
typedef struct {
  bool gear_ready;
  uint32_t gear[256];
} addon_state;

static void free_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

// One gear step on q[k]; returns the cut offset (relative to p) when the
// masked bits are all zero. A hit is rare (about once per 2^14..2^18 bytes).
#define CDC_STEP(mask, k)                                          \
  do {                                                             \
    h = (h << 1) + gear[q[k]];                                     \
    if (__builtin_expect((h & (mask)) == 0, 0)) {                  \
      return (uint32_t)(q - p) + (uint32_t)(k);                    \
    }                                                              \
  } while (0)

#define CDC_STEP8(mask) \
  CDC_STEP(mask, 0);    \
  CDC_STEP(mask, 1);    \
  CDC_STEP(mask, 2);    \
  CDC_STEP(mask, 3);    \
  CDC_STEP(mask, 4);    \
  CDC_STEP(mask, 5);    \
  CDC_STEP(mask, 6);    \
  CDC_STEP(mask, 7)

// cutPoint(data, start, start + avail): the length of the chunk starting at p.
// Note the quirks kept from the reference: hashing starts at offset CHUNK_MIN
// with h = 0, and a hit at offset i yields length i (byte i starts the next
// chunk). The loops are unrolled 8x; the hash has a 1-cycle dependency chain,
// and this is about 1 cycle per byte.
static inline uint32_t cdc_cut(const uint8_t *restrict p, size_t avail,
                               const uint32_t *restrict gear) {
  if (avail <= CDC_MIN) return (uint32_t)avail;
  uint32_t n = avail > CDC_MAX ? CDC_MAX : (uint32_t)avail;
  uint32_t normal = n < CDC_AVG ? n : CDC_AVG;
  uint32_t h = 0;
  const uint8_t *q = p + CDC_MIN;
  const uint8_t *stop = p + normal;
  for (; stop - q >= 8; q += 8) {
    CDC_STEP8(CDC_MASK_S);
  }
  for (; q < stop; q++) CDC_STEP(CDC_MASK_S, 0);
  stop = p + n;
  for (; stop - q >= 8; q += 8) {
    CDC_STEP8(CDC_MASK_L);
  }
  for (; q < stop; q++) CDC_STEP(CDC_MASK_L, 0);
  return n;
}

// Borrows the elements of a typed array of the given type (no copy).
static bool get_typed(napi_env env, napi_value value, napi_typedarray_type want,
                      const char *what, void **data, size_t *length) {
  bool is_typed = false;
  napi_status st = napi_is_typedarray(env, value, &is_typed);
  if (st != napi_ok) return napi_fail(env, st);
  napi_typedarray_type type = napi_int8_array;
  if (is_typed) {
    st = napi_get_typedarray_info(env, value, &type, length, data, NULL, NULL);
    if (st != napi_ok) return napi_fail(env, st);
  }
  if (!is_typed || type != want) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return false;
  }
  return true;
}

// cdcInit(gear: Int32Array): copies the 256-entry gear table into this
// environment's state. May be called again (the table is replaced).
static napi_value CdcInit(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  void *data = NULL;
  size_t length = 0;
  if (!get_typed(env, argv[0], napi_int32_array, "gear must be an Int32Array", &data, &length)) {
    return NULL;
  }
  if (length != 256) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "gear must have 256 entries");
    return NULL;
  }
  addon_state *state = NULL;
  CHECK(napi_get_instance_data(env, (void **)&state));
  if (state == NULL) {
    state = calloc(1, sizeof(*state));
    if (state == NULL) {
      napi_throw_error(env, "ENOMEM", "out of memory");
      return NULL;
    }
    napi_status st = napi_set_instance_data(env, state, free_state, NULL);
    if (st != napi_ok) {
      free(state);
      napi_fail(env, st);
      return NULL;
    }
  }
  memcpy(state->gear, data, sizeof(state->gear));  // int32 -> same bits as uint32
  state->gear_ready = true;
  return NULL;
}

// cdcChunks(data: Uint8Array, start, end, final: boolean, out: Uint32Array):
// number. Cuts consecutive chunks of data[start, end) from start, writing their
// lengths to out, and returns how many it wrote. Stops when out is full, at
// end, or — unless final — as soon as fewer than CHUNK_MAX bytes remain (the
// next boundary may depend on bytes not supplied yet). start/end are validated
// by the TypeScript wrapper and again here.
static napi_value CdcChunks(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  addon_state *state = NULL;
  CHECK(napi_get_instance_data(env, (void **)&state));
  if (state == NULL || !state->gear_ready) {
    napi_throw_error(env, "ERR_INVALID_STATE", "cdcInit has not been called");
    return NULL;
  }
  void *data = NULL, *out_data = NULL;
  size_t length = 0, out_cap = 0;
  int64_t start = 0, end = 0;
  bool final = false;
  if (!get_typed(env, argv[0], napi_uint8_array, "data must be a Uint8Array", &data, &length) ||
      !get_int64(env, argv[1], &start) || !get_int64(env, argv[2], &end)) {
    return NULL;
  }
  CHECK(napi_get_value_bool(env, argv[3], &final));
  if (!get_typed(env, argv[4], napi_uint32_array, "out must be a Uint32Array", &out_data,
                 &out_cap)) {
    return NULL;
  }
  if (start < 0 || end < start || (uint64_t)end > length) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "need 0 <= start <= end <= data.length");
    return NULL;
  }

  const uint8_t *bytes = data;
  uint32_t *out = out_data;
  const uint32_t *gear = state->gear;
  size_t pos = (size_t)start;
  size_t stop = (size_t)end;
  size_t count = 0;
  while (count < out_cap && pos < stop) {
    size_t avail = stop - pos;
    if (!final && avail < CDC_MAX) break;
    uint32_t len = cdc_cut(bytes + pos, avail, gear);
    out[count++] = len;
    pos += len;
  }

  napi_value result;
  CHECK(napi_create_double(env, (double)count, &result));
  return result;
}

// ---------------------------------------------------------------------------
// Registration

NAPI_MODULE_INIT() {
  static const napi_property_descriptor props[] = {
      {"readXattrs", NULL, ReadXattrs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setXattr", NULL, SetXattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, Mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"utimensNs", NULL, UtimensNs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"futimensNs", NULL, FutimensNs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dataSegments", NULL, DataSegments, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scanDir", NULL, ScanDir, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cdcInit", NULL, CdcInit, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cdcChunks", NULL, CdcChunks, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_status st =
      napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  if (st != napi_ok) {
    napi_fail(env, st);
    return NULL;
  }
  return exports;
}

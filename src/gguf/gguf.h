/*
 * gguf.h: GGUF v2/v3 reader (mmap, bounds-checked cursor) and writer
 * (streaming, temp file + rename).
 *
 * The reader trusts nothing: every count, length, offset and size is checked
 * against the file before use, and the first error wins, reported as one
 * line "FILE: byte N: what was wrong". A file that opens is safe to use:
 * every tensor's data lies inside the mapping, aligned, and overlaps no
 * other tensor.
 *
 * A split set (llama.cpp's gguf-split: PREFIX-00001-of-0000N.gguf, keys
 * split.no, split.count, split.tensors.count) opens from its first file as
 * one gguf_file: the metadata of the first file, the tensors of every part
 * in part order, each tensor's data inside its own part's mapping. The
 * writer writes one when asked (gguf_writer_split).
 *
 * The writer reproduces ggml's layout (header, key/values, tensor infos,
 * padding to the alignment, tensor data each padded to the alignment), so
 * a file read and written back unchanged is byte-identical.
 */
#ifndef MOEQ_GGUF_H
#define MOEQ_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_TYPE_UINT8   = 0,
    GGUF_TYPE_INT8    = 1,
    GGUF_TYPE_UINT16  = 2,
    GGUF_TYPE_INT16   = 3,
    GGUF_TYPE_UINT32  = 4,
    GGUF_TYPE_INT32   = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL    = 7,
    GGUF_TYPE_STRING  = 8,
    GGUF_TYPE_ARRAY   = 9,
    GGUF_TYPE_UINT64  = 10,
    GGUF_TYPE_INT64   = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
};

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

/* A string inside the file (not NUL-terminated) or owned by a writer. */
typedef struct {
    const char *s;
    uint64_t    n;
} gguf_str;

/*
 * One metadata value. Scalars are decoded. An array keeps its element type
 * and count; numeric/bool elements are read with gguf_arr_* below (the raw
 * little-endian bytes stay in the mapping); string elements and nested
 * arrays are decoded into items[].
 */
typedef struct gguf_value {
    uint32_t type;
    union {
        uint64_t u64;   /* UINT8/16/32/64 and BOOL */
        int64_t  i64;   /* INT8/16/32/64 */
        double   f64;   /* FLOAT32/64 */
        gguf_str str;
        struct {
            uint32_t           type;  /* element type */
            uint64_t           n;
            const void        *data;  /* numeric/bool: n packed LE elements */
            struct gguf_value *items; /* STRING/ARRAY elements, else NULL */
        } arr;
    } v;
} gguf_value;

typedef struct {
    gguf_str   key;
    gguf_value val;
} gguf_kv;

typedef struct {
    gguf_str    name;
    uint32_t    type;                  /* ggml type id */
    uint32_t    n_dims;                /* 1..4 */
    uint64_t    ne[GGUF_MAX_DIMS];     /* unused dims are 1 */
    uint64_t    offset;                /* relative to the data section */
    uint64_t    nbytes;
    const void *data;                  /* inside the mapping */
    uint32_t    part;                  /* 0-based split part holding it */
} gguf_tensor;

typedef struct gguf_file {
    char          *path;
    const uint8_t *base;               /* mapping (or caller's buffer) */
    uint64_t       size;
    uint32_t       version;
    uint64_t       n_kv;
    gguf_kv       *kv;
    uint64_t       n_tensors;
    gguf_tensor   *tensors;
    uint64_t       alignment;
    uint64_t       data_offset;        /* file offset of the data section */
    int            mapped;
    struct gguf_index *index;          /* private: hash lookups by name */
    uint32_t       n_parts;            /* 1, or the split set's split.count */
    struct gguf_file **parts;          /* n_parts - 1 later parts, owned */
} gguf_file;

/* Keys of a split set. */
#define GGUF_KEY_SPLIT_NO      "split.no"
#define GGUF_KEY_SPLIT_COUNT   "split.count"
#define GGUF_KEY_SPLIT_TENSORS "split.tensors.count"

/* The name of part no (0-based) of count for path: path's stem (path less
 * a trailing "-NNNNN-of-NNNNN.gguf", else less a trailing ".gguf") then
 * "-%05u-of-%05u.gguf". 0, or -1 when it does not fit in out. */
int gguf_split_path(char *out, size_t outlen, const char *path, uint32_t no, uint32_t count);

/*
 * Open and validate a GGUF file (mmap, read-only); the first file of a
 * split set opens the whole set, every part checked (split.count the same,
 * split.no its position, split.tensors.count the tensors found, no tensor
 * name twice). Returns NULL and writes a one-line message into err on any
 * problem.
 */
gguf_file *gguf_open(const char *path, char *err, size_t errlen);

/* Same, over a caller-owned buffer that must outlive the result (fuzzing). */
gguf_file *gguf_open_buffer(const void *buf, size_t size, const char *name,
                            char *err, size_t errlen);

void gguf_close(gguf_file *f);

/* Lookups: NULL / -1 when absent. */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
int64_t        gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters: 0 on success, -1 when absent or of another type family.
 * get_u64 accepts any unsigned/non-negative integer; get_f64 any float. */
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f64(const gguf_file *f, const char *key, double *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
/* String as a NUL-terminated copy in out (truncated to outlen). */
int gguf_get_str(const gguf_file *f, const char *key, char *out, size_t outlen);

/* Element i of a numeric array as i64/u64/f64; strings by pointer. A float
 * element read as an integer is truncated toward zero and saturated at the
 * type's bounds (negative as u64: 0), NaN reads as 0. Out of range i: 0. */
int64_t  gguf_arr_i64(const gguf_value *arr, uint64_t i);
uint64_t gguf_arr_u64(const gguf_value *arr, uint64_t i);
double   gguf_arr_f64(const gguf_value *arr, uint64_t i);
size_t   gguf_type_size(uint32_t vtype); /* bytes of a scalar value type, 0 for STRING/ARRAY */
const char *gguf_type_name(uint32_t vtype);

/* ---------------------------------------------------------------- writer */

typedef struct gguf_writer gguf_writer;

/*
 * Start writing path through src/util/outfile (a temporary file in the same
 * folder, renamed over path by gguf_writer_finish; a device or FIFO is
 * written straight to). Refuses (NULL, err set) when path names the same
 * file as any of the command's inputs[0..n_inputs) (NULL entries skipped),
 * or the folder is not writable. gguf_writer_open is the one-input form
 * (refuse_path may be NULL).
 */
gguf_writer *gguf_writer_open_inputs(const char *path, const char *const *inputs, int n_inputs,
                                     char *err, size_t errlen);
gguf_writer *gguf_writer_open(const char *path, const char *refuse_path,
                              char *err, size_t errlen);

void gguf_writer_set_version(gguf_writer *w, uint32_t version); /* default 3 */

/* Metadata, in the order they will appear. Values are deep-copied. A key
 * named general.alignment also sets the alignment used for the data. */
int gguf_writer_add_kv(gguf_writer *w, const char *key, const gguf_value *v);
int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_add_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_add_bool(gguf_writer *w, const char *key, int v);
int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v);
int gguf_writer_add_arr_str(gguf_writer *w, const char *key,
                            const char *const *v, uint64_t n);
/* Numeric array of element type etype from n packed native values. */
int gguf_writer_add_arr(gguf_writer *w, const char *key, uint32_t etype,
                        const void *v, uint64_t n);
/* Add every key/value of f, in f's order (the usual start of a rewrite:
 * quantize copies the source's metadata, then edits a few keys). */
int gguf_writer_add_kvs_from(gguf_writer *w, const gguf_file *f);
/* Replace the value of an already added key (e.g. general.file_type);
 * adds it when absent. */
int gguf_writer_set_kv(gguf_writer *w, const char *key, const gguf_value *v);
int gguf_writer_remove_kv(gguf_writer *w, const char *key);

/* Declare a tensor; data offsets follow declaration order. Returns index. */
int64_t gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type,
                               uint32_t n_dims, const uint64_t *ne);

/* Write the header and tensor infos; after this only tensor data. */
int gguf_writer_begin_data(gguf_writer *w);

/* Append bytes of the current tensor (tensors are written in declaration
 * order, each in one or more calls); padding is added automatically when a
 * tensor's declared size is complete. */
int gguf_writer_write(gguf_writer *w, const void *data, size_t n);

/* Check every tensor was written in full, flush, fsync and rename. Frees w.
 * On failure the temporary file is removed, the target left untouched, and
 * the message is available from gguf_writer_error(NULL) on this thread. */
int gguf_writer_finish(gguf_writer *w);

/*
 * Write a split set instead of path: n_parts files named by gguf_split_path,
 * each through src/util/outfile and refused like path. part_of[i] is the
 * part of tensor i (0 for the first, each the same as or one more than the
 * one before, the last n_parts - 1). The first part carries every key/value,
 * later parts none; each gets split.no, split.count and split.tensors.count.
 * Call after the tensors are added, before the data. n_parts 1 writes path
 * unsplit. Without this call, any split.* keys copied in are dropped.
 */
int gguf_writer_split(gguf_writer *w, const uint32_t *part_of, uint32_t n_parts);
/* Parts by size: a new part whenever the next tensor would take the current
 * one past max_bytes of tensor data (a tensor larger than that gets a part
 * of its own). Sets *n_parts when not NULL. */
int gguf_writer_split_max_size(gguf_writer *w, uint64_t max_bytes, uint32_t *n_parts);

/* Remove the temporary file and free w. */
void gguf_writer_abort(gguf_writer *w);

/* End a write whose data calls all succeeded (ok) or not: finish or abort,
 * then 0, or -1 with the writer's message in err[errlen]. Frees w. */
int gguf_writer_end(gguf_writer *w, int ok, char *err, size_t errlen);

/* Last error message of a writer call that returned -1; with w NULL, the
 * message of this thread's last failed gguf_writer_finish. */
const char *gguf_writer_error(const gguf_writer *w);

#endif

/*
 * outfile.h: the one way a moeq command writes a file. Every writer (the
 * GGUF writer, the imatrix writer, dump, perplexity's KL-divergence base,
 * run's logits dump, and any later one) opens its output here; nothing
 * else creates, renames or replaces an output. Any library or tools file
 * may include it.
 *
 * An output is refused when it is the same file (device and inode, so
 * through symlinks, hard links, "./" and "..") as any input the command
 * reads, and when it is a directory, a socket or a block device. A regular
 * (or absent) output is written to a temporary file in its folder, named
 * ".NAME.tmp.PID.XXXXXX", fsync'd and renamed over NAME only when complete;
 * a symlink to a regular file is followed, so the link stays and its target
 * is replaced. On any error, on SIGINT, SIGTERM or SIGHUP, and at exit()
 * the temporary file is removed; after a SIGKILL only that temporary file
 * remains, and the next open of the same output removes the ones whose
 * process is gone. A character device or FIFO (/dev/stdout, /dev/null, a
 * pipe) is written straight to, never replaced.
 */
#ifndef MOEQ_OUTFILE_H
#define MOEQ_OUTFILE_H

#include <stddef.h>
#include <stdio.h>

typedef struct moeq_outfile moeq_outfile;

/* 0 when path may be written by a command reading inputs[0..n_inputs)
 * (NULL entries are skipped); -1 with err set ("PATH: reason") when it is
 * one of them or cannot be an output. Commands call it before long work so
 * a refused output costs nothing; moeq_outfile_open checks again. */
int moeq_outfile_check(const char *path, const char *const *inputs, int n_inputs,
                       char *err, size_t errlen);

/* Check, remove stale temporary files of path, and open it for writing.
 * NULL with err set on failure. */
moeq_outfile *moeq_outfile_open(const char *path, const char *const *inputs, int n_inputs,
                                char *err, size_t errlen);

/* The stream to write to (fully buffered). */
FILE *moeq_outfile_fp(const moeq_outfile *o);

/* -1 with err "writing PATH: reason" once a write has failed, else 0. */
int moeq_outfile_failed(const moeq_outfile *o, char *err, size_t errlen);

/* Flush, fsync, close and rename over the final name (a device or FIFO:
 * flush and close). Frees o. -1 with err "writing PATH: reason" (errno
 * text) on failure, the temporary file then removed and the final name
 * untouched. */
int moeq_outfile_commit(moeq_outfile *o, char *err, size_t errlen);

/* Close, remove the temporary file, free o. NULL is a no-op. */
void moeq_outfile_abort(moeq_outfile *o);

/* Remove every temporary file still open. Async-signal-safe: for a
 * command's own signal handler that ends the process (_exit). */
void moeq_outfile_unlink_all(void);

#endif

/*
 * common.h: small definitions every module of limits shares.
 *
 * Error convention (c-style-anchors.md §C.3): a fallible function returns 0 on success or a
 * negative UV_E* code (UV_ENOMEM, UV_EINVAL, UV_ETIMEDOUT, ...), so one error space and
 * uv_strerror() serve the whole program. Business outcomes (declined, over a limit, not found)
 * are values, never errors.
 *
 * Out-of-memory policy: on a request path an allocation failure is propagated as UV_ENOMEM and
 * becomes an error response (500/503) or a closed connection; the process never aborts for it.
 * Only start-up (configuration, listener, README rendering) may treat it as fatal.
 *
 * Threading: everything in limits runs on one libuv loop thread per process. No module is
 * thread-safe unless its header says so.
 */
#ifndef LIM_COMMON_H
#define LIM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define LIM_MUSTCHECK                    __attribute__((warn_unused_result))
#define LIM_UNUSED                       __attribute__((unused))
#define LIM_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))

#define LIM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Recover the struct that embeds `ptr` as its member `member`. */
#define lim_container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

/* Money: int64_t minor units (cents) everywhere, with a _minor suffix on names. */
typedef int64_t lim_money_t;

#endif

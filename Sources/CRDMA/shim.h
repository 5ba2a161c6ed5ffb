/*
 * CRDMA: the one header through which Swift sees libibverbs and librdmacm.
 *
 * Most of the verbs API imports into Swift as it is, static inline functions included
 * (ibv_post_send, ibv_post_recv, ibv_poll_cq, ibv_req_notify_cq). What follows covers
 * the few calls that the C headers define as function-like macros, which Swift cannot
 * import, under names prefixed with crdma_.
 */
#ifndef CRDMA_SHIM_H
#define CRDMA_SHIM_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <stdint.h>

/* ibv_query_port is a macro over ___ibv_query_port; this is its callable form. */
static inline int crdma_query_port(struct ibv_context *context, uint8_t port_num,
                                   struct ibv_port_attr *port_attr) {
    return ibv_query_port(context, port_num, port_attr);
}

/* ibv_reg_mr is a macro choosing between ibv_reg_mr and ibv_reg_mr_iova2; the plain call. */
static inline struct ibv_mr *crdma_reg_mr(struct ibv_pd *pd, void *addr, size_t length,
                                          int access) {
    return ibv_reg_mr(pd, addr, length, access);
}

/* Layouts the Swift layer relies on: a work completion and a scatter-gather element are
 * passed to the provider as arrays of these exact structs. */
_Static_assert(sizeof(struct ibv_sge) == 16, "ibv_sge layout changed");
_Static_assert(sizeof(struct ibv_wc) == 48, "ibv_wc layout changed");
_Static_assert(sizeof(union ibv_gid) == 16, "ibv_gid layout changed");

#endif

/* Non-inline wrappers around the parts of DPDK that are static inline functions or
 * macros (the fast path), so Rust can call them. All names start with msgr_dpdk_ so
 * they never collide with DPDK's own symbols. */
#ifndef MSGR_DPDK_SHIM_H
#define MSGR_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/* rte_eth_rx_burst / rte_eth_tx_burst. */
uint16_t msgr_dpdk_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t msgr_dpdk_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

/* rte_pktmbuf_alloc: NULL when the pool is empty. */
struct rte_mbuf *msgr_dpdk_pktmbuf_alloc(struct rte_mempool *mp);
/* rte_pktmbuf_alloc_bulk: 0 on success (all count allocated), negative otherwise (none). */
int msgr_dpdk_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int count);
/* rte_pktmbuf_free: frees every segment of the chain; NULL is a no-op. */
void msgr_dpdk_pktmbuf_free(struct rte_mbuf *m);
/* rte_pktmbuf_append: pointer to the len new bytes at the end, or NULL without tailroom. */
char *msgr_dpdk_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_trim: 0 on success, -1 if len exceeds the last segment's data. */
int msgr_dpdk_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_mtod(m, void *): start of the first segment's data. */
void *msgr_dpdk_pktmbuf_mtod(struct rte_mbuf *m);
/* rte_pktmbuf_data_len / rte_pktmbuf_pkt_len (macros). */
uint16_t msgr_dpdk_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t msgr_dpdk_pktmbuf_pkt_len(const struct rte_mbuf *m);
/* rte_pktmbuf_headroom / rte_pktmbuf_tailroom. */
uint16_t msgr_dpdk_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t msgr_dpdk_pktmbuf_tailroom(const struct rte_mbuf *m);
/* m->nb_segs and m->pool. */
uint16_t msgr_dpdk_pktmbuf_nb_segs(const struct rte_mbuf *m);
struct rte_mempool *msgr_dpdk_pktmbuf_pool(const struct rte_mbuf *m);

/* rte_errno (a per-thread variable behind a macro). */
int msgr_dpdk_errno(void);
/* rte_lcore_id(): the calling thread's lcore id, UINT32_MAX (LCORE_ID_ANY) if none. */
unsigned int msgr_dpdk_lcore_id(void);

#endif

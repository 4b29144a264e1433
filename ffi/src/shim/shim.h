/*
 * Out-of-line copies of DPDK's `static inline` functions, which have no symbol in the
 * shared libraries and so cannot be bound directly. Each is a one-line forwarder; the
 * optimiser inlines the DPDK body into it. Exported DPDK functions are bound directly.
 */
#ifndef HEDDLE_DPDK_SHIM_H
#define HEDDLE_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

int heddle_rte_errno(void);
unsigned heddle_rte_lcore_id(void);
uint64_t heddle_rte_rdtsc(void);

uint16_t heddle_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                 struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t heddle_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                 struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

struct rte_mbuf *heddle_rte_pktmbuf_alloc(struct rte_mempool *mp);
int heddle_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                                  unsigned count);
void heddle_rte_pktmbuf_free(struct rte_mbuf *m);
char *heddle_rte_pktmbuf_mtod(struct rte_mbuf *m);
char *heddle_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *heddle_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
char *heddle_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t heddle_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint32_t heddle_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t heddle_rte_pktmbuf_data_len(const struct rte_mbuf *m);
uint16_t heddle_rte_pktmbuf_nb_segs(const struct rte_mbuf *m);
unsigned heddle_rte_mempool_avail_count(const struct rte_mempool *mp);

#endif

/* See shim.h: forwarders for DPDK's static inline functions. */
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ethdev.h>

#include "shim.h"

int heddle_rte_errno(void) { return rte_errno; }
unsigned heddle_rte_lcore_id(void) { return rte_lcore_id(); }
uint64_t heddle_rte_rdtsc(void) { return rte_rdtsc(); }

uint16_t heddle_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                 struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t heddle_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                 struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *heddle_rte_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

int heddle_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void heddle_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
char *heddle_rte_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, char *); }
char *heddle_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *heddle_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
char *heddle_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
uint16_t heddle_rte_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint32_t heddle_rte_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t heddle_rte_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint16_t heddle_rte_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
unsigned heddle_rte_mempool_avail_count(const struct rte_mempool *mp) { return rte_mempool_avail_count(mp); }

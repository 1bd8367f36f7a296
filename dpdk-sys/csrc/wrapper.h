/* Headers bindgen generates Rust declarations for. rte_config.h comes in through the
 * `-include rte_config.h` of `pkg-config --cflags libdpdk`. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include "shim.h"

#!/usr/bin/env bash
# mesh.sh - build a simulated LAN of N hosts out of Linux network namespaces.
#
# Topology (root namespace is never touched):
#
#   netns acp-sw : bridge acp-br0 (multicast snooping off), ports p1..pN
#   netns acp-hI : lo (up) + eth0 (veth peer of acp-sw:pI), 10.77.0.I/24,
#                  multicast on, route 224.0.0.0/4 dev eth0
#
# Subcommands:
#   up N               build acp-sw + acp-h1..acp-hN (tears down an old mesh first)
#   down               kill processes inside the acp-* namespaces, delete them
#   status             list namespaces, addresses, qdiscs, nft fault tables
#   exec I CMD...      run CMD inside acp-hI   (I may also be "sw")
#   loss I PCT [in|out|both]
#                      random packet loss on hI's link, dropped at the switch
#                      port pI (nftables netdev, numgen random), so hI's own
#                      TCP stack sees real loss. Default: both.
#   netem I ARGS...    `tc qdisc replace dev eth0 root netem ARGS` if the kernel
#                      has sch_netem; otherwise only `loss P%` is emulated (with
#                      nftables, egress only, like netem) and anything else
#                      (delay, duplicate, reorder, rate...) is refused: exit 3.
#   clear I            remove netem qdisc and nft fault table from hI
#   cut I              invisible partition: detach switch port pI from the
#                      bridge; hI keeps carrier and sees nothing locally
#   heal I             re-attach pI to the bridge
#   unplug I / plug I  switch-side port pI down/up: hI's eth0 loses carrier
#                      (NO-CARRIER), like pulling the cable at the host
#   link I down|up     host-side eth0 admin down/up
#   ip I               print the IPv4 address of hI
#   pids I             PIDs running inside acp-hI
#
# Kernel note: this VM kernel has no sch_netem (CONFIG_NET_SCH_NETEM unset) and
# no act_gact; nftables (netdev family, numgen) is used for loss instead.
# Requires root, iproute2 (ip, tc). Addresses exist only inside the namespaces.
set -euo pipefail
# Copied from the maintainers' netns tools (kept outside this repository) so that tests/mesh
# depends on nothing outside it; unchanged apart from this note. The facts measured with it are in
# docs/architecture.md ("Facts about mDNS").

PREFIX=${ACP_MESH_PREFIX:-acp}
SW="${PREFIX}-sw"
BR="${PREFIX}-br0"
NET=${ACP_MESH_NET:-10.77.0}

die() { echo "mesh.sh: $*" >&2; exit 1; }
hostns() { [[ "$1" == sw ]] && echo "$SW" || echo "${PREFIX}-h$1"; }
our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}-(sw|h[0-9]+)$" || true; }

cmd_down() {
  local ns pid
  for ns in $(our_namespaces); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  done
  sleep 0.3
  for ns in $(our_namespaces); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
}

cmd_up() {
  local n=${1:-2} i ns
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 250 ]] || die "up N: 1..250"
  cmd_down
  ip netns add "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add "$BR" type bridge mcast_snooping 0 stp_state 0 forward_delay 0
  ip -n "$SW" link set "$BR" up
  # no IPv6 autoconf noise on the switch itself
  ip netns exec "$SW" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
  for ((i = 1; i <= n; i++)); do
    ns="${PREFIX}-h$i"
    ip netns add "$ns"
    ip -n "$SW" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "p$i" master "$BR" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$NET.$i/24" dev eth0
    ip -n "$ns" link set eth0 multicast on up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
  done
  # wait until all ports forward
  for ((i = 0; i < 50; i++)); do
    if ! ip -n "$SW" -br link show master "$BR" | grep -qv ' UP '; then break; fi
    sleep 0.1
  done
  echo "mesh up: $SW/$BR + ${PREFIX}-h1..${PREFIX}-h$n on $NET.0/24"
}

cmd_status() {
  local ns
  for ns in $(our_namespaces); do
    echo "== $ns"
    ip -n "$ns" -br addr
    ip netns exec "$ns" tc qdisc show | grep -v 'noqueue' || true
    [[ $ns == "$SW" ]] && ip netns exec "$ns" nft list ruleset netdev 2>/dev/null | grep -E 'table|numgen' || true
  done
}

nft_loss() { # host-index pct dirs: drop at the switch port pI, so the host's own stack sees real loss
  local i=$1 pct=$2 dirs=$3 rules="" table="acpfault_p$1"
  [[ "$pct" =~ ^[0-9]+$ && "$pct" -le 100 ]] || die "loss: PCT must be an integer 0..100"
  ip netns exec "$SW" nft delete table netdev "$table" 2>/dev/null || true
  [[ "$pct" -eq 0 ]] && return 0
  # at the switch, what hI sends arrives on pI's ingress; what hI receives leaves by pI's egress
  if [[ $dirs == out || $dirs == both ]]; then
    rules+="chain from_host { type filter hook ingress device \"p$i\" priority 0; policy accept; numgen random mod 100 < $pct counter drop; }"$'\n'
  fi
  if [[ $dirs == in || $dirs == both ]]; then
    rules+="chain to_host { type filter hook egress device \"p$i\" priority 0; policy accept; numgen random mod 100 < $pct counter drop; }"$'\n'
  fi
  printf 'table netdev %s {\n%s}\n' "$table" "$rules" | ip netns exec "$SW" nft -f -
}

cmd_loss() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] || die "loss I PCT [in|out|both]"
  nft_loss "$1" "${2:?loss I PCT}" "${3:-both}"
}

have_netem() { # probe on hI itself
  local ns=$1
  if ip netns exec "$ns" tc qdisc replace dev eth0 root netem delay 0ms 2>/dev/null; then
    ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
    return 0
  fi
  return 1
}

cmd_clear() {
  local ns; ns=$(hostns "$1")
  ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
  ip netns exec "$SW" nft delete table netdev "acpfault_p$1" 2>/dev/null || true
}

cmd_netem() {
  local i=$1; shift
  local ns; ns=$(hostns "$i")
  if [[ "${1:-}" == clear ]]; then cmd_clear "$i"; return; fi
  if have_netem "$ns"; then
    ip netns exec "$ns" tc qdisc replace dev eth0 root netem "$@"
    return
  fi
  if [[ $# -eq 2 && "$1" == loss && "$2" =~ ^([0-9]+)%?$ ]]; then
    echo "mesh.sh: no sch_netem in this kernel; emulating 'loss $2' (what the host sends) at the switch" >&2
    nft_loss "$i" "${BASH_REMATCH[1]}" out
    return
  fi
  echo "mesh.sh: no sch_netem in this kernel; only 'netem I loss P%' can be emulated (asked: $*)" >&2
  exit 3
}

sub=${1:-}; shift || true
case "$sub" in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  exec) i=$1; shift; exec ip netns exec "$(hostns "$i")" "$@" ;;
  netem) cmd_netem "$@" ;;
  loss) cmd_loss "$@" ;;
  clear) cmd_clear "$@" ;;
  cut) ip -n "$SW" link set "p$1" nomaster ;;
  heal) ip -n "$SW" link set "p$1" master "$BR" ;;
  unplug) ip -n "$SW" link set "p$1" down ;;
  plug) ip -n "$SW" link set "p$1" up ;;
  link) ip -n "$(hostns "$1")" link set eth0 "$2" ;;
  ip) echo "$NET.$1" ;;
  pids) ip netns pids "$(hostns "$1")" ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print } /^set -euo/ { exit }' "$0"; exit 2 ;;
esac

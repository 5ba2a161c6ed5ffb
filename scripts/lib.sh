# Shared by scripts/test and scripts/pingpong-demo.

# Exports RXE_DEVICE and RXE_ADDR for the first rxe link on this host (after `rxe-setup up`).
export_host_rxe_env() {
  local line netdev
  line=$(rdma link show 2>/dev/null | awk '/netdev/ {print; exit}')
  [ -n "$line" ] || return 1
  RXE_DEVICE=$(echo "$line" | awk '{print $2}' | cut -d/ -f1)
  netdev=$(echo "$line" | sed -n 's/.*netdev \([^ ]*\).*/\1/p')
  RXE_ADDR=$(ip -4 -o addr show dev "$netdev" | awk '{print $4; exit}' | cut -d/ -f1)
  [ -n "$RXE_DEVICE" ] && [ -n "$RXE_ADDR" ] || return 1
  export RXE_DEVICE RXE_ADDR
}

# Runs "$@" where a soft-RoCE device is: on this host when `rxe-setup up` works here, otherwise
# in a throwaway VM. RXE_DEVICE and RXE_ADDR are set for the command either way.
run_on_rxe() {
  local rxe_setup
  rxe_setup="$(dirname "${BASH_SOURCE[0]}")/../rxe-setup/rxe-setup"
  if "$rxe_setup" up >/dev/null 2>&1 && export_host_rxe_env; then
    echo "==> on this host's soft-RoCE device $RXE_DEVICE ($RXE_ADDR)"
    "$@"
  else
    echo "==> inside a soft-RoCE VM (this kernel has no rdma_rxe; see rxe-setup/README.md)"
    "$rxe_setup" vm --timeout "${RXE_VM_TIMEOUT:-1500}" -- "$@"
  fi
}

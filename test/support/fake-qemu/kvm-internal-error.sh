#!/bin/sh
# A QEMU whose KVM is broken the way a paravirtualized nested KVM is (see
# kvm-internal-error.mjs): every `-accel kvm` run goes to the fake, every
# other run (TCG, --version) to the real qemu-system-x86_64. Point CRH_QEMU here.
for arg in "$@"; do
  if [ "$prev" = "-accel" ] && [ "$arg" = "kvm" ]; then
    exec node "$(dirname "$0")/kvm-internal-error.mjs" "$@"
  fi
  prev=$arg
done
exec "${CRH_REAL_QEMU:-qemu-system-x86_64}" "$@"

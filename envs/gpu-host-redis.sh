#!/usr/bin/env bash
# redis-server for an offline GPU host (no internet, no redis-server; LMCache's Redis arm,
# kvreuse.remote_store), in one small part that travels like the wheels (../shared/gpu-host/README.md).
#
#   here (Debian/Ubuntu with apt):  envs/gpu-host-redis.sh stage .gpu-stage      -> .gpu-stage/redis.tgz
#   on the host:                    bash envs/gpu-host-redis.sh install /root/stage/redis.tgz /root/redis
#                                   export PATH=/root/redis/bin:$PATH   (in every later command there)
#
# stage: `apt-get download`s Debian's redis-tools (it holds the redis-server binary) and the
# libraries it needs that a slim image may lack (libjemalloc2, liblzf1, libatomic1), unpacks
# them (dpkg-deb -x, no root needed on the host) with a redis-server wrapper that finds those
# libraries, and packs them into one tgz (a few MB). The binary needs glibc >= 2.34 and the
# host's libssl3 and libsystemd0: Debian 12 / Ubuntu 22.04 and later. The GPU host's OS is not
# recorded in ../shared/gpu-host/README.md: `install` runs `redis-server --version` there and
# fails loudly if the binary does not load.
set -euo pipefail
DEBS=(redis-tools libjemalloc2 liblzf1 libatomic1)
cmd="${1:?usage: gpu-host-redis.sh stage OUTDIR | install TGZ DEST}"
case "$cmd" in
  stage)
    out="$(realpath -m "${2:?usage: gpu-host-redis.sh stage OUTDIR}")"
    work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
    mkdir -p "$out" "$work/debs" "$work/redis/bin"
    ( cd "$work/debs" && apt-get download "${DEBS[@]}" )
    for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/redis"; done
    # redis chooses its mode by argv[0]: redis-tools' binary is redis-check-rdb, and the
    # redis-server link to it is in the redis-server package (not taken: service files), so make it
    ln -sf redis-check-rdb "$work/redis/usr/bin/redis-server"
    cat > "$work/redis/bin/redis-server" <<'WRAP'
#!/bin/sh
here="$(dirname "$(readlink -f "$0")")/.."
LD_LIBRARY_PATH="$here/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/usr/bin/redis-server" "$@"
WRAP
    chmod +x "$work/redis/bin/redis-server"
    ls "$work"/debs > "$work/redis/DEBS"
    tar czf "$out/redis.tgz" -C "$work/redis" .
    echo "staged $(wc -l < "$work/redis/DEBS") packages into $out/redis.tgz ($(du -h "$out/redis.tgz" | cut -f1))"
    ;;
  install)
    tgz="${2:?usage: gpu-host-redis.sh install TGZ DEST}"; dest="${3:?usage: gpu-host-redis.sh install TGZ DEST}"
    mkdir -p "$dest" && tar xzf "$tgz" -C "$dest"
    "$dest/bin/redis-server" --version || { echo "redis-server does not load on this host (see above)" >&2; exit 1; }
    echo "then: export PATH=$dest/bin:\$PATH (kvreuse starts redis-server from PATH: server.redis_server)"
    ;;
  *) echo "usage: gpu-host-redis.sh stage OUTDIR | install TGZ DEST" >&2; exit 2 ;;
esac

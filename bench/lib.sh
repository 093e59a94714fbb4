# shellcheck shell=bash
# Helpers shared by bench scripts. Source it; do not execute it.
# Conventions follow /work/shared/design/BENCHMARKING.md: a cached debootstrap corpus, a freshly
# made ext4 on a loop device for every write measurement, A/B alternation, medians.

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}

require_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, mkfs and loop mounts need it): sudo $0"
}

# ---------------------------------------------------------------------------------------------
# Tools

# ensure_tools [TOOL=PACKAGE...]: install the Debian packages that provide missing tools (the
# common set below plus the ones given). `apt-get update` runs at most once, and only when
# something is missing.
ensure_tools() {
  local -A pkg_of=(
    [debootstrap]=debootstrap
    [zstd]=zstd
    [wimlib-imagex]=wimtools
    [/usr/bin/time]=time
    [mkfs.ext4]=e2fsprogs
    [losetup]=mount
    [sha256sum]=coreutils
  )
  local tool extra missing=()
  for extra in "$@"; do pkg_of[${extra%%=*}]=${extra#*=}; done
  for tool in "${!pkg_of[@]}"; do
    if [[ $tool == /* ]]; then [[ -x $tool ]] && continue; else command -v "$tool" >/dev/null && continue; fi
    missing+=("${pkg_of[$tool]}")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get to install them"
  log "installing missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || die "apt-get update failed"
  apt-get install -y -q "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# apt_mirror: print the Debian archive URI apt already uses (never a hard-coded host). Reads the
# one-line format (/etc/apt/sources.list, sources.list.d/*.list) and deb822
# (sources.list.d/*.sources, field URIs:). Skips deb-src, disabled entries and the security,
# updates and backports suites. $MIRROR overrides.
apt_mirror() {
  if [[ -n ${MIRROR:-} ]]; then
    printf '%s\n' "$MIRROR"
    return
  fi
  local f uri=
  local -a oneline=() deb822=()
  [[ -f /etc/apt/sources.list ]] && oneline+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list; do [[ -f $f ]] && oneline+=("$f"); done
  for f in /etc/apt/sources.list.d/*.sources; do [[ -f $f ]] && deb822+=("$f"); done
  if ((${#oneline[@]})); then
    uri=$(awk '
      /^[[:space:]]*#/ || NF < 3 || $1 != "deb" { next }
      {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }   # skip [options]
        u = $i; s = $(i + 1)
        if (s ~ /-(security|updates|backports)$/ || u ~ /security/) next
        print u; exit
      }' "${oneline[@]}")
  fi
  if [[ -z $uri ]] && ((${#deb822[@]})); then
    uri=$(awk '
      function flush() {
        if (found) return
        if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "" && uris !~ /security/) {
          n = split(suites, s, " ")
          for (k = 1; k <= n; k++) if (s[k] !~ /-(security|updates|backports)$/) { split(uris, u, " "); print u[1]; found = 1; exit }
        }
        types = uris = suites = enabled = ""
      }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key)
        val = $0; sub(/^[^:]*:[[:space:]]*/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = tolower(val)
      }
      END { flush() }' < <(for f in "${deb822[@]}"; do cat -- "$f"; echo; done)) || true
  fi
  [[ -n $uri ]] || die "could not find a Debian mirror in /etc/apt/sources.list*; set MIRROR=<uri>"
  printf '%s\n' "${uri%/}"
}

# ---------------------------------------------------------------------------------------------
# Corpus

# build_tree DIR SUITE [INCLUDE]: debootstrap --variant=minbase once; DIR.done marks it complete.
build_tree() {
  local dir=$1 suite=$2 include=${3:-} mirror tmp
  if [[ -f $dir.done && -d $dir ]]; then
    if ! grep -q 'apt_clean=1' "$dir.done"; then # caches made before the clean-up step existed
      apt_clean_tree "$dir"
      printf 'apt_clean=1\n' >>"$dir.done"
    fi
    return 0
  fi
  mirror=$(apt_mirror)
  tmp=$dir.partial
  rm_tree "$tmp"
  rm -rf -- "$dir"
  log "debootstrap --variant=minbase${include:+ --include=$include} $suite (mirror $mirror) -> $dir"
  local -a args=(--variant=minbase)
  [[ -n $include ]] && args+=("--include=$include")
  if ! debootstrap "${args[@]}" "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
    tail -n 20 "$tmp.log" >&2
    umount_under "$tmp"
    die "debootstrap failed; full log in $tmp.log"
  fi
  umount_under "$tmp"
  apt_clean_tree "$tmp"
  mv -- "$tmp" "$dir"
  mv -- "$tmp.log" "$dir.log"
  printf 'suite=%s include=%s mirror=%s built=%s\napt_clean=1\n' "$suite" "$include" "$mirror" "$(date -Is)" >"$dir.done"
}

# apt_clean_tree DIR: what `apt-get clean` does. debootstrap leaves the downloaded .debs in
# var/cache/apt/archives; an OS image of a real machine does not hold them, and they would make
# v2's "new content" partly incompressible .debs rather than the files an upgrade changes.
apt_clean_tree() {
  find "$1/var/cache/apt" -maxdepth 2 \( -name '*.deb' -o -name '*.bin' \) -type f -delete 2>/dev/null || true
}

# umount_under DIR: unmount anything (proc, sys, ...) a failed debootstrap left mounted below DIR.
umount_under() {
  local d=$1 m
  [[ -d $d ]] || return 0
  d=$(realpath -- "$d")
  while read -r m; do
    umount -l -- "$m" 2>/dev/null || true
  done < <(awk -v d="$d/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
}

rm_tree() {
  [[ -e $1 ]] || return 0
  umount_under "$1"
  rm -rf -- "$1"
}

# tree_stats DIR: prints "<apparent bytes (du -sb)> <regular-file bytes> <entries> <regular files>".
tree_stats() {
  local du entries files fbytes
  du=$(du -sb -- "$1" | cut -f1)
  read -r entries files fbytes < <(find "$1" -mindepth 1 -printf '%y %s\n' |
    awk '{ n++ } $1 == "f" { f++; b += $2 } END { printf "%d %d %d\n", n, f, b }')
  printf '%s %s %s %s\n' "$du" "$fbytes" "$entries" "$files"
}

# new_content OLD NEW OUT_PREFIX: regular files of NEW whose relative path is absent from OLD or
# whose sha256 differs. Writes OUT_PREFIX.list (NUL-separated, C-locale path order) and prints
# "<files> <raw bytes> <zstd -3 bytes of their concatenation>".
new_content() {
  local old=$1 new=$2 out=$3
  hash_tree "$old" >"$out.old.sha256"
  hash_tree "$new" >"$out.new.sha256"
  # sha256sum lines: "<64 hex>  <path>"; paths in a debootstrap tree have no newlines.
  LC_ALL=C awk 'NR == FNR { h[substr($0, 67)] = substr($0, 1, 64); next }
    { p = substr($0, 67); if (!(p in h) || h[p] != substr($0, 1, 64)) printf "%s%c", p, 0 }' \
    "$out.old.sha256" "$out.new.sha256" | LC_ALL=C sort -z >"$out.list"
  local files raw z
  files=$(tr -cd '\0' <"$out.list" | wc -c)
  raw=$( (cd "$new" && xargs -0 -r stat -c %s -- <"$out.list") | awk '{ s += $1 } END { printf "%d", s }')
  z=$( (cd "$new" && xargs -0 -r cat -- <"$out.list") | zstd -3 -q -c | wc -c)
  printf '%s %s %s\n' "$files" "$raw" "$z"
}

hash_tree() {
  (cd "$1" && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 -r sha256sum --)
}

# ---------------------------------------------------------------------------------------------
# Fresh ext4 on a loop device

# fresh_ext4 IMG MNT: (re)make an 8 GiB sparse file, mkfs.ext4 it and loop-mount it at MNT.
fresh_ext4() {
  local img=$1 mnt=$2
  drop_ext4 "$img" "$mnt"
  mkdir -p -- "$mnt"
  truncate -s "${BENCH_FS_SIZE:-8G}" -- "$img"
  mkfs.ext4 -q -F -- "$img" >/dev/null
  mount -o loop -- "$img" "$mnt"
}

drop_ext4() {
  local img=$1 mnt=$2
  if mountpoint -q -- "$mnt" 2>/dev/null; then
    umount -- "$mnt" || umount -l -- "$mnt"
  fi
  rm -f -- "$img"
}

# ---------------------------------------------------------------------------------------------
# Timing and statistics

# timed OUTFILE CMD...: run CMD under /usr/bin/time; append "<wall seconds> <max RSS KiB>" to
# OUTFILE; CMD's stdout/stderr go to OUTFILE.out / OUTFILE.err. Returns CMD's exit status.
# An untimed `sync` first, so that write-back left by the previous step does not land in this
# measurement.
timed() {
  local out=$1 t0 t1 rc=0
  shift
  sync
  t0=$(date +%s.%N)
  /usr/bin/time -f %M -o "$out.rss" "$@" >"$out.out" 2>"$out.err" || rc=$?
  t1=$(date +%s.%N)
  if ((rc == 0)); then
    printf '%s %s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
      "$(tail -n 1 "$out.rss")" >>"$out"
  fi
  return "$rc"
}

# median FILE [COLUMN]: median of column (default 1); empty when the file has no numbers.
median() {
  [[ -s $1 ]] || return 0
  awk -v c="${2:-1}" '{ print $c }' "$1" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# max FILE [COLUMN]
max_col() {
  [[ -s $1 ]] || return 0
  awk -v c="${2:-1}" 'NR == 1 || $c > m { m = $c } END { if (NR) print m }' "$1"
}

# ratio A B: A/B with 3 decimals, empty if either is missing or B is 0.
ratio() {
  [[ -n ${1:-} && -n ${2:-} ]] || return 0
  awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 != 0) printf "%.3f", a / b }'
}

# le A B: true when A <= B (both numbers).
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }

mb() { if [[ -n ${1:-} ]]; then awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; else printf 'n/a'; fi; }

# Sourced by scripts that need Debian's archive: derives the archive address
# from the machine's own apt configuration and never from a built-in host name.
# (APT_ARCHIVE_ETC overrides /etc/apt, for tests.)
#
#   apt_archive_uri [SUITE]   prints the URI of the first "deb" source serving
#                             SUITE (default: the release's codename), or fails
#                             with a message saying what was looked at.
#   apt_archive_keyring       prints the Signed-By keyring of that source, if any.

_apt_archive_scan() {
  # Prints "URI<TAB>KEYRING" for every deb source whose suites include $1.
  local suite=$1 f
  for f in "${APT_ARCHIVE_ETC:-/etc/apt}"/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk -v want="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && uris != "" && tolower(enabled) != "no" && (" " suites " ") ~ (" " want " "))
          { n = split(uris, u, " "); for (i = 1; i <= n; i++) print u[i] "\t" key }
        types = ""; uris = ""; suites = ""; key = ""; enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:"     { $1 = ""; types = substr($0, 2) }
      tolower($1) == "uris:"      { $1 = ""; uris = substr($0, 2) }
      tolower($1) == "suites:"    { $1 = ""; suites = substr($0, 2) }
      tolower($1) == "signed-by:" { key = $2 }
      tolower($1) == "enabled:"   { enabled = $2 }
      END { flush() }' "$f"
  done
  for f in "${APT_ARCHIVE_ETC:-/etc/apt}"/sources.list "${APT_ARCHIVE_ETC:-/etc/apt}"/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk -v want="$suite" '
      $1 == "deb" {
        key = ""; i = 2
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) }
            if ($i ~ /\]$/) { i++; break }
          }
        }
        if ($(i+1) == want) print $i "\t" key
      }' "$f"
  done
}

_apt_archive_codename() {
  . /etc/os-release 2>/dev/null || true
  echo "${VERSION_CODENAME:-}"
}

apt_archive_uri() {
  local suite=${1:-$(_apt_archive_codename)} line
  line=$(_apt_archive_scan "$suite" | head -n1)
  if [ -z "$line" ]; then
    echo "apt-archive: no 'deb' source for suite '${suite:-?}' in /etc/apt/sources.list or /etc/apt/sources.list.d/;" \
         "configure apt with the Debian archive (or a mirror of it) first" >&2
    return 1
  fi
  printf '%s\n' "${line%%$'\t'*}"
}

apt_archive_keyring() {
  local suite=${1:-$(_apt_archive_codename)} line
  line=$(_apt_archive_scan "$suite" | head -n1)
  printf '%s\n' "${line#*$'\t'}"
}

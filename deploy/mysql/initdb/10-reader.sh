#!/bin/bash
# The read-only account (SELECT on the application database only) for Grafana's MySQL data source
# and the live dashboard (compare serve). Mounted into /docker-entrypoint-initdb.d: the official
# mysql image runs it once, when it initializes an empty mysql-data volume, after creating root and
# the application account; it is never run again. To change the password later, see
# docs/operations.md (ALTER USER, or remove the volume).
#
# Works sourced (the entrypoint's choice for a file that is not executable) or executed: all in a
# subshell, so nothing here changes the entrypoint's variables or shell options.
(
  set -eu
  : "${MYSQL_READER_PASSWORD:?set MYSQL_READER_PASSWORD in .env}"
  : "${MYSQL_ROOT_PASSWORD:?}"
  reader=${MYSQL_READER_USER:-coinstream_reader}
  database=${MYSQL_DATABASE:-coinstream}
  # A string literal's content, as the entrypoint escapes its own (backslash, single quote).
  literal() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }
  # A database name in a grant: backticks doubled, and `_` literal rather than a wildcard.
  grant_db() { printf '%s' "$1" | sed -e 's/`/``/g' -e 's/_/\\_/g'; }
  # As root, over the init server's socket: the entrypoint's own function when sourced, else the
  # client with the password in its environment (never on its command line).
  root_sql() {
    if declare -F docker_process_sql >/dev/null; then
      docker_process_sql
    else
      MYSQL_PWD=$MYSQL_ROOT_PASSWORD mysql --protocol=socket -uroot -hlocalhost \
        --socket="${SOCKET:-/var/run/mysqld/mysqld.sock}"
    fi
  }
  account="'$(literal "$reader")'@'%'"
  root_sql <<SQL
CREATE USER $account IDENTIFIED BY '$(literal "$MYSQL_READER_PASSWORD")';
GRANT SELECT ON \`$(grant_db "$database")\`.* TO $account;
SQL
  echo "10-reader.sh: created the read-only account $reader (SELECT on $database)"
)

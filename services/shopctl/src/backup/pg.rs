//! The PostgreSQL side of backup and restore: URLs for libpq tools, the tools themselves, and
//! the server's databases and transaction ids.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, ensure};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::process::Command;

/// `--pg-url` as a libpq URI for one database, without the password (which goes to the child
/// in `PGPASSWORD`, not on its command line).
pub(super) fn libpq_uri(url: &str, database: &str) -> anyhow::Result<(String, Option<String>)> {
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
        .context("--pg-url must be a postgres:// URL")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    let (host, user, password) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((u, p)) => (host, Some(u), Some(percent_decode(p)?)),
            None => (host, Some(userinfo), None),
        },
        None => (authority, None, None),
    };
    let user = user.map_or(String::new(), |u| format!("{u}@"));
    Ok((
        format!("{scheme}://{user}{host}/{database}{query}"),
        password,
    ))
}

pub(super) fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("bad percent-encoding in --pg-url")?;
            out.push(u8::from_str_radix(hex, 16).context("bad percent-encoding in --pg-url")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("--pg-url password is not UTF-8")
}

/// host:port of `--pg-url`, for the manifest.
pub(super) fn server_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

/// Database names are built from the prefix: keep them plain identifiers.
pub(super) fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    ensure!(
        !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "--db-prefix {prefix:?}: use lower-case letters, digits and _"
    );
    Ok(())
}

/// `tool` (pg_dump, pg_restore) from `--pg-bin`, else the newest /usr/lib/postgresql/N/bin that
/// has it, else PATH.
pub(super) fn pg_tool(tool: &str, pg_bin: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = pg_bin {
        let p = dir.join(tool);
        ensure!(p.is_file(), "{} not found", p.display());
        return Ok(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(tool);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{tool} not found in /usr/lib/postgresql/*/bin or PATH (--pg-bin DIR)")
        })
}

pub(super) async fn tool_version(tool: &Path) -> anyhow::Result<String> {
    let out = Command::new(tool).arg("--version").output().await?;
    ensure!(out.status.success(), "{} --version failed", tool.display());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs a pg_dump / pg_restore with the password in its environment; its stderr on failure.
pub(super) async fn run_tool(
    tool: &Path,
    args: &[String],
    password: Option<&str>,
) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(tool);
    cmd.args(args).kill_on_drop(true);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .output()
        .await
        .with_context(|| format!("run {}", tool.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        tool.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

pub(super) async fn server_pool(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("--pg-url is not a PostgreSQL URL")?;
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("cannot connect to --pg-url")
}

/// The next transaction id the server will hand out (takes none).
pub(super) async fn next_xid(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?,
    )
}

pub(super) async fn database_exists(server: &PgPool, name: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
    )
    .bind(name)
    .fetch_one(server)
    .await?)
}

pub(super) async fn drop_database(server: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(server)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_names_the_database_and_keeps_the_password_off_the_command_line() {
        let (uri, pw) =
            libpq_uri("postgres://shop:s%40p@127.0.0.1:5432/postgres", "x_order").expect("uri");
        assert_eq!(uri, "postgres://shop@127.0.0.1:5432/x_order");
        assert_eq!(pw.as_deref(), Some("s@p"));
        let (uri, pw) =
            libpq_uri("postgresql://db.example:6432?sslmode=require", "y").expect("uri");
        assert_eq!(uri, "postgresql://db.example:6432/y?sslmode=require");
        assert_eq!(pw, None);
        assert!(libpq_uri("host=127.0.0.1 dbname=postgres", "y").is_err());
        assert_eq!(
            server_of("postgres://shop:shop@127.0.0.1:5432/postgres"),
            "127.0.0.1:5432"
        );
    }

    #[test]
    fn prefixes_are_plain_identifiers() {
        assert!(check_prefix("shop_").is_ok());
        assert!(check_prefix("r01234_").is_ok());
        for bad in ["", "Shop_", "a\"; DROP", "x-y_"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}

//! `auth_hba_file`: PostgreSQL's pg_hba.conf format, as PgBouncer reads it for `auth_type = hba`.
//!
//! Records are `local DATABASE USER METHOD` and `host|hostssl|hostnossl DATABASE USER ADDRESS METHOD` (ADDRESS is a
//! CIDR, `all`, or an address followed by a netmask field). DATABASE and USER are comma-separated lists of names,
//! `all`, `sameuser` (database only), `replication` (database only), or `@file` (names read from a file next to
//! this one). Double quotes make a keyword an ordinary name. METHOD is trust, reject, md5, password,
//! scram-sha-256, peer or cert; options after it (`name=value`) are accepted and ignored, as PgBouncer does. The
//! first record that matches decides; no match means the connection is refused. Group names (`+group`), host
//! names and `samehost`/`samenet` need lookups pgmux does not do: they are errors that name the line.

use std::net::IpAddr;
use std::path::Path;

use crate::error::ConfigError;

/// How a client connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Over the Unix socket.
    Local,
    /// Over TCP from this address (pgmux offers no TLS, so `hostssl` never matches).
    Tcp(IpAddr),
}

/// What a matching record demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    Md5,
    Password,
    ScramSha256,
    Peer,
    Cert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    SameUser,
    Replication,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    All,
    Net { addr: IpAddr, prefix: u8 },
}

/// One record of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1-based line number, for logs.
    pub line: usize,
    conn: ConnType,
    databases: Vec<Name>,
    users: Vec<Name>,
    address: Address,
    pub method: Method,
}

/// A parsed auth_hba_file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hba {
    pub rules: Vec<Rule>,
}

impl Hba {
    pub fn load(path: &Path) -> Result<Hba, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, &e))?;
        Hba::parse(&text, path)
    }

    /// Parses `text` as read from `path` (used for messages and to find `@file` lists).
    pub fn parse(text: &str, path: &Path) -> Result<Hba, ConfigError> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut rules = Vec::new();
        let mut pending = String::new();
        let mut first_line = 0;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            if pending.is_empty() {
                first_line = line_no;
            }
            // A backslash at the very end continues the record on the next line.
            if let Some(head) = raw.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(raw);
            let record = std::mem::take(&mut pending);
            let fields = tokenize(&record).map_err(|m| ConfigError::at_line(path, first_line, None, m))?;
            if fields.is_empty() {
                continue;
            }
            let rule =
                parse_rule(&fields, first_line, &dir).map_err(|m| ConfigError::at_line(path, first_line, None, m))?;
            rules.push(rule);
        }
        if !pending.trim().is_empty() {
            return Err(ConfigError::at_line(path, first_line, None, "the file ends inside a continued record"));
        }
        Ok(Hba { rules })
    }

    /// The first record that matches, or `None` (refuse the connection).
    pub fn lookup(&self, peer: Peer, database: &str, user: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(peer, database, user))
    }
}

impl Rule {
    fn matches(&self, peer: Peer, database: &str, user: &str) -> bool {
        let conn_ok = match (self.conn, peer) {
            (ConnType::Local, Peer::Local) => true,
            (ConnType::Host | ConnType::HostNoSsl, Peer::Tcp(_)) => true,
            // No TLS in pgmux: a hostssl record never matches.
            _ => false,
        };
        if !conn_ok {
            return false;
        }
        if let (Address::Net { addr, prefix }, Peer::Tcp(client)) = (&self.address, peer) {
            if !in_net(client, *addr, *prefix) {
                return false;
            }
        }
        // pgmux does not do replication connections, so "replication" never matches a database.
        let db_ok = self.databases.iter().any(|n| match n {
            Name::All => true,
            Name::SameUser => database == user,
            Name::Replication => false,
            Name::Exact(d) => d == database,
        });
        db_ok && self.users.iter().any(|n| matches!(n, Name::All) || *n == Name::Exact(user.to_string()))
    }
}

/// A field and whether any part of it was quoted (quoted parts are wrapped in NUL markers in `text`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    text: String,
    quoted: bool,
}

impl Field {
    /// The text without quote markers, for fields where quoting changes nothing (type, address, method).
    fn plain(&self) -> String {
        self.text.replace('\u{0}', "")
    }
}

/// Splits a record into fields: whitespace-separated, `"..."` quoting (with `""` for a quote), `#` starts a comment
/// outside quotes. Commas stay inside the field; list items are split later (respecting quotes).
fn tokenize(line: &str) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut started = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                    cur.push('\u{0}');
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '#' => break,
            '"' => {
                in_quotes = true;
                quoted = true;
                started = true;
                // Markers around quoted text, so list splitting knows which commas and keywords were quoted.
                cur.push('\u{0}');
            }
            c if c.is_whitespace() => {
                if started {
                    fields.push(Field { text: std::mem::take(&mut cur), quoted });
                    quoted = false;
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if in_quotes {
        return Err("unterminated quoted string".into());
    }
    if started {
        fields.push(Field { text: cur, quoted });
    }
    Ok(fields)
}

/// Splits a DATABASE or USER field into names. Keywords count only unquoted; `@file` reads names from a file.
fn parse_names(field: &Field, what: &str, dir: &Path, depth: usize) -> Result<Vec<Name>, String> {
    let mut names = Vec::new();
    // Items are separated by unquoted commas; a quoted item starts with the \0 marker.
    let mut items: Vec<(String, bool)> = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    for c in field.text.chars() {
        match c {
            '\u{0}' => {
                quoted = true;
                in_quotes = !in_quotes;
            }
            ',' if !in_quotes => {
                items.push((std::mem::take(&mut cur), quoted));
                quoted = false;
            }
            c => cur.push(c),
        }
    }
    items.push((cur, quoted));
    for (item, quoted) in items {
        if item.is_empty() && !quoted {
            return Err(format!("empty name in the {what} list"));
        }
        if quoted {
            names.push(Name::Exact(item));
            continue;
        }
        match item.as_str() {
            "all" => names.push(Name::All),
            "sameuser" if what == "database" => names.push(Name::SameUser),
            "replication" if what == "database" => names.push(Name::Replication),
            "samerole" | "samegroup" => {
                return Err(format!("{item} needs role membership lookups, which pgmux does not do"))
            }
            s if s.starts_with('+') => {
                return Err(format!("group names ({s}) need role membership lookups, which pgmux does not do"))
            }
            s if s.starts_with('@') => {
                if depth > 8 {
                    return Err("@file lists nested too deep".into());
                }
                let path = dir.join(&s[1..]);
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("{s}: cannot read {}: {e}", path.display()))?;
                for token in text.lines().flat_map(|l| l.split('#').next().unwrap_or("").split([',', ' ', '\t'])) {
                    if token.is_empty() {
                        continue;
                    }
                    let f = Field { text: token.to_string(), quoted: false };
                    names.extend(parse_names(&f, what, path.parent().unwrap_or(dir), depth + 1)?);
                }
            }
            s => names.push(Name::Exact(s.to_string())),
        }
    }
    Ok(names)
}

fn parse_method(s: &str) -> Result<Method, String> {
    Ok(match s {
        "trust" => Method::Trust,
        "reject" => Method::Reject,
        "md5" => Method::Md5,
        "password" => Method::Password,
        "scram-sha-256" => Method::ScramSha256,
        "peer" => Method::Peer,
        "cert" => Method::Cert,
        other => return Err(format!("unsupported authentication method \"{other}\"")),
    })
}

fn parse_rule(fields: &[Field], line: usize, dir: &Path) -> Result<Rule, String> {
    let get = |i: usize, what: &str| fields.get(i).ok_or_else(|| format!("missing {what}"));
    let conn = match get(0, "connection type")?.plain().as_str() {
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "hostgssenc" | "hostnogssenc" => return Err("GSSAPI connection types are not supported".into()),
        other => return Err(format!("invalid connection type \"{other}\"")),
    };
    let databases = parse_names(get(1, "database")?, "database", dir, 0)?;
    let users = parse_names(get(2, "user")?, "user", dir, 0)?;
    let (address, method_at) = if conn == ConnType::Local {
        (Address::All, 3)
    } else {
        let a = get(3, "address")?;
        let next = fields.get(4).map(Field::plain);
        let (addr, used) = parse_address(&a.plain(), next.as_deref())?;
        (addr, 3 + used)
    };
    let method = parse_method(&get(method_at, "authentication method")?.plain())?;
    for opt in fields.iter().skip(method_at + 1) {
        if !opt.plain().contains('=') {
            return Err(format!("authentication option \"{}\" is not name=value", opt.plain()));
        }
    }
    Ok(Rule { line, conn, databases, users, address, method })
}

/// An ADDRESS field (and, when it is a bare IP address, the NETMASK field after it). Returns how many fields it
/// used.
fn parse_address(a: &str, next: Option<&str>) -> Result<(Address, usize), String> {
    match a {
        "all" => return Ok((Address::All, 1)),
        "samehost" | "samenet" => return Err(format!("{a} needs interface lookups, which pgmux does not do")),
        _ => {}
    }
    if let Some((ip, bits)) = a.split_once('/') {
        let addr: IpAddr = ip.parse().map_err(|_| format!("invalid IP address \"{ip}\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 =
            bits.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("invalid CIDR mask in \"{a}\""))?;
        return Ok((Address::Net { addr, prefix }, 1));
    }
    let Ok(addr) = a.parse::<IpAddr>() else {
        return Err(format!("host names (\"{a}\") need DNS lookups, which pgmux does not do; use an IP address"));
    };
    let mask: IpAddr = next
        .ok_or("an IP address without /bits needs a netmask field")?
        .parse()
        .map_err(|_| format!("invalid netmask after \"{a}\""))?;
    let bits = match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones() as u8,
        IpAddr::V6(m) => u128::from(m).leading_ones() as u8,
    };
    if addr.is_ipv4() != mask.is_ipv4() {
        return Err("address and netmask are of different families".into());
    }
    Ok((Address::Net { addr, prefix: bits }, 2))
}

fn in_net(client: IpAddr, net: IpAddr, prefix: u8) -> bool {
    // An IPv4 client reaching an IPv6 socket shows as ::ffff:a.b.c.d.
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    match (client, net) {
        (IpAddr::V4(c), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(c) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(c), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(c) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hba(text: &str) -> Hba {
        Hba::parse(text, Path::new("/nonexistent/pg_hba.conf")).unwrap()
    }

    fn err(text: &str) -> String {
        Hba::parse(text, Path::new("/nonexistent/pg_hba.conf")).unwrap_err().to_string()
    }

    fn ip(s: &str) -> Peer {
        Peer::Tcp(s.parse().unwrap())
    }

    fn method(h: &Hba, peer: Peer, db: &str, user: &str) -> Option<Method> {
        h.lookup(peer, db, user).map(|r| r.method)
    }

    #[test]
    fn first_match_wins() {
        let h = hba("# comment\n\
             local all postgres peer\n\
             host appdb alice 127.0.0.1/32 trust   # inline comment\n\
             host all bob,carol 10.0.0.0/8 md5\n\
             host all all 0.0.0.0/0 scram-sha-256\n\
             host all all ::1/128 password\n\
             local sameuser all md5\n");
        assert_eq!(method(&h, Peer::Local, "x", "postgres"), Some(Method::Peer));
        assert_eq!(method(&h, ip("127.0.0.1"), "appdb", "alice"), Some(Method::Trust));
        assert_eq!(method(&h, ip("127.0.0.2"), "appdb", "alice"), Some(Method::ScramSha256));
        assert_eq!(method(&h, ip("10.1.2.3"), "otherdb", "carol"), Some(Method::Md5));
        assert_eq!(method(&h, ip("::1"), "otherdb", "carol"), Some(Method::Password));
        assert_eq!(method(&h, ip("::ffff:127.0.0.1"), "appdb", "alice"), Some(Method::Trust), "v4-mapped");
        assert_eq!(method(&h, Peer::Local, "dave", "dave"), Some(Method::Md5));
        assert_eq!(method(&h, Peer::Local, "appdb", "dave"), None, "no match: refused");
        assert_eq!(h.lookup(ip("10.0.0.1"), "d", "bob").unwrap().line, 4);
    }

    #[test]
    fn quoting_netmasks_continuations_and_options() {
        let h = hba("host \"all\" \"my user\" 192.168.1.0 255.255.255.0 md5\n\
             host all \\\n all 172.16.0.0/12 reject\n\
             hostssl all all 0.0.0.0/0 trust\n\
             hostnossl all all 0.0.0.0/0 scram-sha-256 clientcert=verify-full\n");
        // "all" quoted is a database named all.
        assert_eq!(method(&h, ip("192.168.1.9"), "all", "my user"), Some(Method::Md5));
        assert_eq!(method(&h, ip("192.168.1.9"), "appdb", "my user"), Some(Method::ScramSha256));
        let lists = hba("local \"a,b\",c all trust\n");
        assert_eq!(method(&lists, Peer::Local, "a,b", "x"), Some(Method::Trust));
        assert_eq!(method(&lists, Peer::Local, "c", "x"), Some(Method::Trust));
        assert_eq!(method(&lists, Peer::Local, "a", "x"), None);
        assert_eq!(method(&h, ip("172.20.0.1"), "x", "y"), Some(Method::Reject));
        // hostssl never matches: no TLS.
        assert_eq!(method(&h, ip("8.8.8.8"), "x", "y"), Some(Method::ScramSha256));
        assert_eq!(h.rules[1].line, 2);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("host all all 127.0.0.1/32 ident\n", "line 1"),
            ("\nhost all all localhost md5\n", "line 2"),
            ("host all all 127.0.0.1/33 md5\n", "CIDR"),
            ("host all +admins 0.0.0.0/0 md5\n", "group"),
            ("host all all samenet md5\n", "samenet"),
            ("local all\n", "missing"),
            ("bogus all all md5\n", "connection type"),
            ("host \"all all 0.0.0.0/0 md5\n", "unterminated"),
            ("local all all md5 \\", "continued"),
            ("local all all md5 notanoption\n", "name=value"),
            ("host all all 127.0.0.1 md5\n", "netmask"),
            ("local @missing all md5\n", "cannot read"),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn at_file_lists() {
        let dir = std::env::temp_dir().join(format!("pgmux-hba-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admins"), "alice, bob\n# comment\ncarol\n").unwrap();
        let h = Hba::parse("local all @admins trust\n", &dir.join("pg_hba.conf")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for u in ["alice", "bob", "carol"] {
            assert_eq!(method(&h, Peer::Local, "db", u), Some(Method::Trust), "{u}");
        }
        assert_eq!(method(&h, Peer::Local, "db", "dave"), None);
    }

    #[test]
    fn nets() {
        assert!(in_net("10.1.2.3".parse().unwrap(), "10.0.0.0".parse().unwrap(), 8));
        assert!(!in_net("11.1.2.3".parse().unwrap(), "10.0.0.0".parse().unwrap(), 8));
        assert!(in_net("1.2.3.4".parse().unwrap(), "0.0.0.0".parse().unwrap(), 0));
        assert!(in_net("fe80::1".parse().unwrap(), "fe80::".parse().unwrap(), 10));
        assert!(!in_net("::1".parse().unwrap(), "127.0.0.1".parse().unwrap(), 32));
    }
}

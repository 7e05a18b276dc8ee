//! Structure-aware: agreement-shaped TOML (tables, arrays of tables, every date-time spelling
//! TOML has) built from arbitrary data. Parsing, linting and hashing never panic; the hash
//! depends on the values, not their spelling (the same document re-serialized hashes the same,
//! and an offset date-time moved to another offset hashes the same); and the agreement's hash
//! is the text's hash.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct When {
    days: u16,
    secs: u32,
    nanos: u32,
    /// Minutes east of UTC, clamped to ±23:59.
    offset: i16,
    style: u8,
}

#[derive(Arbitrary, Debug)]
struct Route {
    method: u8,
    path: String,
    scope: String,
    content_types: Vec<String>,
    max_bytes: Option<u32>,
}

#[derive(Arbitrary, Debug)]
struct Flow {
    from: String,
    to: String,
    max_scope: Vec<String>,
    pii: Vec<String>,
    routes: Vec<Route>,
}

#[derive(Arbitrary, Debug)]
struct Doc {
    id: String,
    version: u16,
    from: When,
    until: When,
    depth: u8,
    ttl: u16,
    disclose: [u8; 2],
    flows: Vec<Flow>,
    junk_key: Option<String>,
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The date-time in one of TOML's spellings.
fn when(w: &When) -> (String, String) {
    let base = 1_700_000_000i64 + (w.days as i64 % 3650) * 86_400 + (w.secs as i64 % 86_400);
    let nanos = w.nanos % 1_000_000_000;
    let off = (w.offset as i64).clamp(-(23 * 60 + 59), 23 * 60 + 59);
    let fmt = |t: i64, off: i64, sep: char, frac: bool| {
        let local = t + off * 60;
        let days = local.div_euclid(86_400);
        let sod = local.rem_euclid(86_400);
        let (y, m, d) = civil(days);
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        if frac && nanos != 0 {
            s.push_str(&format!(".{nanos:09}"));
        }
        if off == 0 && w.style % 2 == 0 {
            s.push('Z');
        } else {
            let sign = if off < 0 { '-' } else { '+' };
            s.push_str(&format!("{sign}{:02}:{:02}", off.abs() / 60, off.abs() % 60));
        }
        s
    };
    let sep = if w.style % 3 == 0 { ' ' } else { 'T' };
    (fmt(base, off, sep, true), fmt(base, 0, 'T', true))
}

fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn render(d: &Doc, utc: bool) -> String {
    let (f, fu) = when(&d.from);
    let (u, uu) = when(&d.until);
    let (f, u) = if utc { (fu, uu) } else { (f, u) };
    let disc = ["clear", "pseudonymous", "none"];
    let mut s = format!(
        "id = {}\nversion = {}\nvalid_from = {f}\nvalid_until = {u}\nmax_chain_depth = {}\nmax_token_ttl = \"{}m\"\n",
        q(&d.id),
        d.version,
        d.depth,
        d.ttl
    );
    if let Some(k) = &d.junk_key {
        s.push_str(&format!("{} = 1\n", q(k)));
    }
    for (i, td) in ["company.com", "vendor.example"].iter().enumerate() {
        s.push_str(&format!(
            "\n[[domains]]\ntrust_domain = \"{td}\"\ngateway_id = \"spiffe://{td}/gateway\"\ngateway_url = \"https://{td}:9443\"\nbundle_endpoint = \"https://{td}:9443/bundle\"\ndisclosure = {{ principal = \"{}\", chain = \"digest\" }}\n",
            disc[d.disclose[i] as usize % 3]
        ));
    }
    for fl in d.flows.iter().take(4) {
        s.push_str(&format!(
            "\n[[flows]]\nfrom = {}\nto = {}\nmax_scope = [{}]\n",
            q(&fl.from),
            q(&fl.to),
            fl.max_scope.iter().take(4).map(|x| q(x)).collect::<Vec<_>>().join(", ")
        ));
        if !fl.pii.is_empty() {
            s.push_str(&format!(
                "pii_scopes = [{}]\n",
                fl.pii.iter().take(4).map(|x| q(x)).collect::<Vec<_>>().join(", ")
            ));
        }
        for r in fl.routes.iter().take(4) {
            let m = ["GET", "POST", "PUT", "DELETE", "*"][r.method as usize % 5];
            s.push_str(&format!(
                "\n[[flows.routes]]\nmethod = \"{m}\"\npath = {}\nscope = {}\n",
                q(&r.path),
                q(&r.scope)
            ));
            if !r.content_types.is_empty() || r.max_bytes.is_some() {
                s.push_str("[flows.routes.response]\n");
                if !r.content_types.is_empty() {
                    s.push_str(&format!(
                        "content_types = [{}]\n",
                        r.content_types.iter().take(3).map(|x| q(x)).collect::<Vec<_>>().join(", ")
                    ));
                }
                if let Some(b) = r.max_bytes {
                    s.push_str(&format!("max_bytes = {b}\n"));
                }
            }
        }
    }
    s
}

fuzz_target!(|d: Doc| {
    let text = render(&d, false);
    let parsed = fedgate::agreement::Agreement::parse(&text);
    let hashed = fedgate::agreement::hash_text(&text);
    if let (Ok(a), Ok((h, _))) = (&parsed, &hashed) {
        assert_eq!(&a.hash, h, "the agreement's hash is its text's");
    }
    if let Ok((h, _)) = &hashed {
        // The same values spelled by the toml crate.
        let v: toml::Table = toml::from_str(&text).expect("hash_text accepted it, so it is TOML");
        let again = toml::to_string(&v).unwrap();
        assert_eq!(&fedgate::agreement::hash_text(&again).unwrap().0, h, "re-serialized");
        // The same instants at UTC.
        let utc = render(&d, true);
        assert_eq!(&fedgate::agreement::hash_text(&utc).unwrap().0, h, "moved to UTC:\n{text}\n{utc}");
    }
});

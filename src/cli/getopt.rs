//! Command-line parsing with glibc `getopt_long_only` semantics, because scripts written for
//! virt-dib rely on them: single-dash long options (`-name x`), unique-prefix abbreviations
//! (`--sk`), argument permutation (options and elements mixed), `--`, and glibc's messages.

/// Whether an option takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    None,
    Required,
    /// Only as `--opt=value` (like `--machine-readable[=format]`).
    Optional,
}

/// One option: its spellings (`-B`, `--element-path`), argument and identity.
#[derive(Debug, Clone, Copy)]
pub struct OptSpec<Id: 'static> {
    pub id: Id,
    /// Short forms are one character (`'m'`), long forms the name without dashes.
    pub shorts: &'static [char],
    pub longs: &'static [&'static str],
    pub arg: ArgKind,
}

/// A parsed command line: options in the order given, and the other words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<Id> {
    pub options: Vec<(Id, Option<String>)>,
    pub operands: Vec<String>,
}

/// Parses `args` (without argv[0]). Errors are glibc's texts without the program-name prefix.
pub fn parse<Id: Copy + PartialEq>(specs: &[OptSpec<Id>], args: &[String]) -> Result<Parsed<Id>, String> {
    let mut out = Parsed { options: Vec::new(), operands: Vec::new() };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            out.operands.extend(args[i..].iter().cloned());
            break;
        }
        if arg.len() < 2 || !arg.starts_with('-') {
            out.operands.push(arg.clone());
            continue;
        }
        let (prefix, body) = if let Some(b) = arg.strip_prefix("--") { ("--", b) } else { ("-", &arg[1..]) };
        // A lone known short option ("-m") is never read as an abbreviated long one.
        let first = body.chars().next().unwrap_or_default();
        let lone_short = prefix == "-" && body.chars().count() == 1 && find_short(specs, first).is_some();
        if !lone_short {
            match parse_long(specs, prefix, body, args, &mut i)? {
                Some(opt) => {
                    out.options.push(opt);
                    continue;
                }
                None if prefix == "-" && find_short(specs, first).is_some() => {}
                None => return Err(format!("unrecognized option '{prefix}{body}'")),
            }
        }
        parse_shorts(specs, body, args, &mut i, &mut out.options)?;
    }
    Ok(out)
}

fn find_short<Id>(specs: &[OptSpec<Id>], c: char) -> Option<&OptSpec<Id>> {
    specs.iter().find(|s| s.shorts.contains(&c))
}

/// A long option; `Ok(None)` when no long name matches at all.
fn parse_long<Id: Copy + PartialEq>(
    specs: &[OptSpec<Id>],
    prefix: &str,
    body: &str,
    args: &[String],
    i: &mut usize,
) -> Result<Option<(Id, Option<String>)>, String> {
    let (name, inline) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (body, None),
    };
    let exact = specs.iter().find_map(|s| s.longs.iter().find(|l| **l == name).map(|l| (s, *l)));
    let (spec, long) = match exact {
        Some(m) => m,
        None => {
            let matches: Vec<(&OptSpec<Id>, &str)> = specs
                .iter()
                .flat_map(|s| s.longs.iter().filter(|l| !name.is_empty() && l.starts_with(name)).map(move |l| (s, *l)))
                .collect();
            let Some(&(first, first_long)) = matches.first() else { return Ok(None) };
            // Several spellings of one option (--col: --color, --colour, ...) are not ambiguous.
            if matches.iter().any(|(s, _)| s.id != first.id) {
                let list: Vec<String> = matches.iter().map(|(_, l)| format!("'{prefix}{l}'")).collect();
                return Err(format!("option '{prefix}{body}' is ambiguous; possibilities: {}", list.join(" ")));
            }
            (first, first_long)
        }
    };
    let value = match (spec.arg, inline) {
        (ArgKind::None, Some(_)) => return Err(format!("option '{prefix}{long}' doesn't allow an argument")),
        (ArgKind::None, None) => None,
        (_, Some(v)) => Some(v),
        (ArgKind::Optional, None) => None,
        (ArgKind::Required, None) => match args.get(*i) {
            Some(v) => {
                *i += 1;
                Some(v.clone())
            }
            None => return Err(format!("option '{prefix}{long}' requires an argument")),
        },
    };
    Ok(Some((spec.id, value)))
}

/// A cluster of short options (`-qv`, `-Bpath`, `-B path`).
fn parse_shorts<Id: Copy>(
    specs: &[OptSpec<Id>],
    body: &str,
    args: &[String],
    i: &mut usize,
    out: &mut Vec<(Id, Option<String>)>,
) -> Result<(), String> {
    for (pos, c) in body.char_indices() {
        let Some(spec) = find_short(specs, c) else { return Err(format!("invalid option -- '{c}'")) };
        match spec.arg {
            ArgKind::None => out.push((spec.id, None)),
            ArgKind::Optional => {
                let rest = &body[pos + c.len_utf8()..];
                out.push((spec.id, (!rest.is_empty()).then(|| rest.to_owned())));
                return Ok(());
            }
            ArgKind::Required => {
                let rest = &body[pos + c.len_utf8()..];
                let value = if !rest.is_empty() {
                    rest.to_owned()
                } else if let Some(v) = args.get(*i) {
                    *i += 1;
                    v.clone()
                } else {
                    return Err(format!("option requires an argument -- '{c}'"));
                };
                out.push((spec.id, Some(value)));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// C `strtol` with base 0 (decimal, `0x` hex, leading-`0` octal), limited to what OCaml's
/// getopt accepts (±2^30). Errors are virt-dib's texts.
pub fn parse_int(s: &str) -> Result<i64, String> {
    let not_numeric = || format!("‘{s}’ is not a numeric value.");
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_numeric());
    }
    let out_of_range = || format!("{s}: integer out of range");
    let magnitude = i64::from_str_radix(digits, radix).map_err(|_| out_of_range())?;
    let v = if neg { -magnitude } else { magnitude };
    if !(-(1i64 << 30)..(1i64 << 30)).contains(&v) {
        return Err(out_of_range());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum O {
        Name,
        Network,
        NoNetwork,
        NoDelete,
        Color,
        B,
        Mem,
        Quiet,
        Verbose,
        Skip,
        Mr,
    }
    const SPECS: &[OptSpec<O>] = &[
        OptSpec { id: O::Name, shorts: &[], longs: &["name"], arg: ArgKind::Required },
        OptSpec { id: O::Network, shorts: &[], longs: &["network"], arg: ArgKind::None },
        OptSpec { id: O::NoDelete, shorts: &[], longs: &["no-delete-on-failure"], arg: ArgKind::None },
        OptSpec { id: O::NoNetwork, shorts: &[], longs: &["no-network"], arg: ArgKind::None },
        OptSpec { id: O::Color, shorts: &[], longs: &["color", "colors", "colour", "colours"], arg: ArgKind::None },
        OptSpec { id: O::B, shorts: &['B'], longs: &[], arg: ArgKind::Required },
        OptSpec { id: O::Mem, shorts: &['m'], longs: &["memsize"], arg: ArgKind::Required },
        OptSpec { id: O::Quiet, shorts: &['q'], longs: &["quiet"], arg: ArgKind::None },
        OptSpec { id: O::Verbose, shorts: &['v'], longs: &["verbose"], arg: ArgKind::None },
        OptSpec { id: O::Skip, shorts: &[], longs: &["skip-base"], arg: ArgKind::None },
        OptSpec { id: O::Mr, shorts: &[], longs: &["machine-readable"], arg: ArgKind::Optional },
    ];

    fn p(args: &[&str]) -> Result<Parsed<O>, String> {
        parse(SPECS, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn long_only_forms_prefixes_and_permutation() {
        let r =
            p(&["elem1", "-name", "x", "--sk", "-mem", "100", "-qv", "elem2", "--machine-readable", "-Bdir"]).unwrap();
        assert_eq!(
            r.options,
            vec![
                (O::Name, Some("x".into())),
                (O::Skip, None),
                (O::Mem, Some("100".into())),
                (O::Quiet, None),
                (O::Verbose, None),
                (O::Mr, None),
                (O::B, Some("dir".into())),
            ]
        );
        assert_eq!(r.operands, vec!["elem1", "elem2"]);
        let r = p(&["--name=a=b", "-m", "5", "--col", "--", "-q", "x"]).unwrap();
        assert_eq!(r.options, vec![(O::Name, Some("a=b".into())), (O::Mem, Some("5".into())), (O::Color, None)]);
        assert_eq!(r.operands, vec!["-q", "x"]);
        assert_eq!(p(&["--machine-readable=file:x"]).unwrap().options, vec![(O::Mr, Some("file:x".into()))]);
    }

    #[test]
    fn glibc_error_texts() {
        assert_eq!(
            p(&["--n"]).unwrap_err(),
            "option '--n' is ambiguous; possibilities: '--name' '--network' '--no-delete-on-failure' '--no-network'"
        );
        assert_eq!(p(&["--bogus"]).unwrap_err(), "unrecognized option '--bogus'");
        assert_eq!(p(&["-bogus"]).unwrap_err(), "unrecognized option '-bogus'");
        assert_eq!(p(&["--name"]).unwrap_err(), "option '--name' requires an argument");
        assert_eq!(p(&["--nam"]).unwrap_err(), "option '--name' requires an argument");
        assert_eq!(p(&["--skip-base=1"]).unwrap_err(), "option '--skip-base' doesn't allow an argument");
        assert_eq!(p(&["-B"]).unwrap_err(), "option requires an argument -- 'B'");
        assert_eq!(p(&["-qz"]).unwrap_err(), "invalid option -- 'z'");
    }

    #[test]
    fn integers_like_strtol_base_0() {
        assert_eq!(parse_int("0x10"), Ok(16));
        assert_eq!(parse_int("010"), Ok(8));
        assert_eq!(parse_int("-3"), Ok(-3));
        assert_eq!(parse_int("0"), Ok(0));
        assert_eq!(parse_int("abc").unwrap_err(), "‘abc’ is not a numeric value.");
        assert_eq!(parse_int("12k").unwrap_err(), "‘12k’ is not a numeric value.");
        assert_eq!(parse_int("9999999999").unwrap_err(), "9999999999: integer out of range");
        assert_eq!(parse_int("1073741824").unwrap_err(), "1073741824: integer out of range");
        assert_eq!(parse_int("1073741823"), Ok(1073741823));
    }
}

//! Target 3, mount options: `options::MountOptions::parse` on random and mutated option
//! lists.

use super::control::mutate_bytes;
use super::*;

const OPTION_WORDS: &[&str] = &[
    "snapshot=a:/x.cow",
    "snapshot=b:/x.cow:N",
    "snapshot=c:/dev/disk/by-path/pci-0000:00:04.0-part1:PO:8",
    "snapshot=d:/x:P:4k",
    "snapshot=e:P",
    "snapshot=f:/x:nvme0",
    "snapshot=",
    "snapshot",
    "snapshot=:/x",
    "snapshot=a:",
    "snapshot=origin:/x",
    "ro",
    "rw",
    "allow_other",
    "allow_root",
    "default_permissions",
    "origin_discard",
    "uid=0",
    "uid=1000",
    "gid=4294967295",
    "uid=4294967296",
    "gid=-1",
    "uid=",
    "x-systemd.automount",
    "comment=hi",
    "user=bob",
    "defaults",
    "_netdev",
    "noatime",
    "subtype=snapfs",
    "registry=/var/lib/r.reg",
    "log=/tmp/l",
    "=",
    "==",
    "ro=1",
];

const OPTION_PIECES: &[&str] = &[
    ",",
    ":",
    "=",
    "/",
    "P",
    "PO",
    "N",
    "8",
    "0",
    "k",
    "snapshot=",
    "a",
    ":P:8",
    ":N:0",
    "x-",
    "\n",
    " ",
    "\u{e9}",
    "\0",
];

/// Inputs that once found a bug in `MountOptions::parse` (none so far), plus edge inputs kept as
/// fixed cases.
const OPTION_REGRESSIONS: &[&[&str]] = &[
    &[""],
    &[",,,"],
    &["snapshot=a:/x:P:8,snapshot=a:/y"],
    &["snapshot=a\n:/x"],
    &["snapshot=a:/x\n:P"],
    &["snapshot=a::P:8"],
    &["snapshot=a:/x:N:0"],
    &["uid=99999999999999999999999"],
    &["allow_other", "allow_root"],
];

fn option_list(rng: &mut Rng) -> Vec<String> {
    let mut lists = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let mut words = Vec::new();
        for _ in 0..rng.below(5) {
            words.push(rng.pick(OPTION_WORDS).to_string());
        }
        let mut text = words.join(",").into_bytes();
        if rng.chance(60) {
            mutate_bytes(&mut text, rng, OPTION_PIECES);
        }
        lists.push(String::from_utf8_lossy(&text).into_owned());
    }
    lists
}

/// The options as a list that must parse back to the same snapshots and flags.
fn render_options(o: &MountOptions) -> Vec<String> {
    let mut out: Vec<String> = o
        .snapshots
        .iter()
        .map(|s| {
            format!(
                "snapshot={}:{}:{}:{}",
                s.name,
                s.cow.display(),
                s.kind,
                s.chunk_sectors
            )
        })
        .collect();
    let flags = [
        (o.read_only, "ro"),
        (o.allow_other, "allow_other"),
        (o.allow_root, "allow_root"),
        (o.origin_discard, "origin_discard"),
    ];
    out.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
    out.extend(o.uid.map(|u| format!("uid={u}")));
    out.extend(o.gid.map(|g| format!("gid={g}")));
    out
}

fn same_options(a: &MountOptions, b: &MountOptions) -> bool {
    a.snapshots == b.snapshots
        && (
            a.read_only,
            a.allow_other,
            a.allow_root,
            a.origin_discard,
            a.uid,
            a.gid,
        ) == (
            b.read_only,
            b.allow_other,
            b.allow_root,
            b.origin_discard,
            b.uid,
            b.gid,
        )
}

fn check_parsed_options(o: &MountOptions) -> Result<(), String> {
    if o.allow_other && o.allow_root {
        return Err("allow_other and allow_root both accepted".into());
    }
    let mut names = HashSet::new();
    for s in &o.snapshots {
        check_snapshot_name(&s.name).map_err(|e| format!("accepted name: {e}"))?;
        if !names.insert(&s.name) || s.cow.as_os_str().is_empty() {
            return Err(format!("accepted {s:?}"));
        }
        if s.kind == StoreKind::Transient && s.chunk_sectors == 0 {
            return Err("a transient store without a chunk size".into());
        }
    }
    Ok(())
}

fn check_option_lists(lists: &[String]) -> Result<(), String> {
    match MountOptions::parse(lists) {
        Err(e) => check_one_line(&e.to_string()),
        Ok(options) => {
            check_parsed_options(&options)?;
            let text = render_options(&options);
            match MountOptions::parse(&text) {
                Ok(again) if same_options(&again, &options) => Ok(()),
                other => Err(format!(
                    "{options:?} renders as {text:?}, which parses as {other:?}"
                )),
            }
        }
    }
}

#[test]
fn fuzz_mount_options() {
    for (k, lists) in OPTION_REGRESSIONS.iter().enumerate() {
        let lists: Vec<String> = lists.iter().map(|s| s.to_string()).collect();
        check_option_lists(&lists).unwrap_or_else(|why| panic!("option regression {k}: {why}"));
    }
    let plan = plan(loader_iters() * PARSER_ITERS_PER_LOADER_ITER);
    let outcomes = drive("options", 3, &plan, |rng, i| {
        let lists = option_list(rng);
        check_option_lists(&lists).map_err(|why| {
            let saved = save_failure(&format!("options-{i}.txt"), lists.join("\n").as_bytes());
            format!(
                "{why}\n  input {} saved to {saved}",
                clip(&format!("{lists:?}"))
            )
        })?;
        Ok(match MountOptions::parse(&lists) {
            Ok(o) if o.snapshots.is_empty() => "accepted, no snapshot".to_string(),
            Ok(_) => "accepted with snapshots".to_string(),
            Err(_) => "refused".to_string(),
        })
    });
    assert_outcomes("options", &plan, &outcomes, &["accepted", "refused"]);
}

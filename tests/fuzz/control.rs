//! Target 2, control commands: `control::parse_command` on random byte strings and mutations
//! of valid commands.

use super::*;

const CONTROL_WORDS: &[&str] = &[
    "snapshot",
    "drop",
    "merge",
    "pause",
    "resume",
    "changes",
    "help",
    "SNAPSHOT",
    "Drop",
    "P",
    "PO",
    "N",
    "po",
    "p",
    "n",
    "POX",
    "PX",
    "Q",
    "8",
    "4k",
    "4K",
    "0",
    "12",
    "1",
    "2097152",
    "4194304",
    "99999999999999999999",
    "/x.cow",
    "/a:b/c.cow",
    "/",
    "//",
    "rel.cow",
    "./x",
    "origin",
    "status",
    "control",
    ".",
    "..",
    "a",
    "b",
    "nightly",
    "-",
    "k",
    "a/b",
    "a:b",
    "\u{e9}t\u{e9}",
    "\u{1f600}",
];

const SEPARATORS: &[&str] = &[
    " ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{2028}", "\u{85}", "\u{0b}",
    "\u{0c}", "\0", "\u{200b}", "",
];

const VALID_COMMANDS: &[&str] = &[
    "snapshot daily /cow/daily.cow P 8\n",
    "snapshot t /x.cow N",
    "snapshot t /x.cow po 4k\r\n",
    "snapshot t /x.cow",
    "drop daily",
    "merge\n",
    "merge daily",
    "pause daily",
    "changes daily",
    "changes daily 4096\n",
    "resume daily\n",
    "help\n",
];

/// Inputs that once found a bug in `parse_command` (none so far), plus edge inputs kept as
/// fixed cases.
const CONTROL_REGRESSIONS: &[&[u8]] = &[
    b"",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"snapshot a /x \xff",
    b"snapshot \xc0\x80 /x",
    b"drop a\0",
    b"snapshot a /\0 P 8",
    b"snapshot a /x P 4294967296",
    b"snapshot a /x N 2097152k",
    b"merge \xe2\x80\xa8 a",
];

fn random_words(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(7) {
        out.extend_from_slice(rng.pick(CONTROL_WORDS).as_bytes());
        out.extend_from_slice(rng.pick(SEPARATORS).as_bytes());
    }
    out
}

/// Byte-level mutations of `input`.
pub(super) fn mutate_bytes(input: &mut Vec<u8>, rng: &mut Rng, words: &[&str]) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() as u64 + 1) as usize;
        match rng.below(7) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                let n = (1 + rng.below(8) as usize).min(input.len() - at);
                input.drain(at..at + n);
            }
            3 => {
                let w = rng.pick(words).as_bytes().to_vec();
                input.splice(at..at, w);
            }
            4 => {
                let s = rng.pick(SEPARATORS).as_bytes().to_vec();
                input.splice(at..at, s);
            }
            5 => input.truncate(at),
            _ => {
                let end = (at + 1 + rng.below(16) as usize).min(input.len());
                let copy = input[at.min(end)..end].to_vec();
                input.splice(at..at, copy);
            }
        }
    }
}

/// Pads `input` to just below, at or just above the size limit.
fn near_the_limit(mut input: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let target = CONTROL_WRITE_MAX - 2 + rng.below(5) as usize;
    let fill = rng.pick(b" x\n");
    while input.len() < target {
        input.push(fill);
    }
    input.truncate(target);
    input
}

fn control_input(rng: &mut Rng) -> Vec<u8> {
    let mut input = match rng.below(10) {
        0 | 1 => {
            let len = rng.below(48);
            rng.bytes(len)
        }
        2..=4 => random_words(rng),
        _ => rng.pick(VALID_COMMANDS).as_bytes().to_vec(),
    };
    if rng.chance(70) {
        mutate_bytes(&mut input, rng, CONTROL_WORDS);
    }
    if rng.chance(2) {
        input = near_the_limit(input, rng);
    }
    input
}

/// The canonical text of a command.
fn render_command(c: &Command) -> String {
    match c {
        Command::Snapshot(s)
            if s.chunk_sectors == 0 && s.kind == StoreKind::Persistent { overflow: false } =>
        {
            format!("snapshot {} {}", s.name, s.cow.display())
        }
        Command::Snapshot(s) if s.chunk_sectors == 0 => {
            format!("snapshot {} {} {}", s.name, s.cow.display(), s.kind)
        }
        Command::Snapshot(s) => format!(
            "snapshot {} {} {} {}",
            s.name,
            s.cow.display(),
            s.kind,
            s.chunk_sectors
        ),
        Command::Drop { name } => format!("drop {name}"),
        Command::Merge { name: None } => "merge".to_string(),
        Command::Merge { name: Some(n) } => format!("merge {n}"),
        Command::Pause { name } => format!("pause {name}"),
        Command::Resume { name } => format!("resume {name}"),
        Command::Changes { name, from: 0 } => format!("changes {name}"),
        Command::Changes { name, from } => format!("changes {name} {from}"),
        Command::Help => "help".to_string(),
    }
}

/// What every accepted command must satisfy.
fn check_command(c: &Command) -> Result<(), String> {
    let name_ok = |n: &str| check_snapshot_name(n).map_err(|e| format!("accepted name: {e}"));
    match c {
        Command::Snapshot(s) => {
            name_ok(&s.name)?;
            if !s.cow.is_absolute() {
                return Err(format!("accepted a relative COW {:?}", s.cow));
            }
            let chunk_ok = (s.chunk_sectors == 0 && s.kind.is_persistent())
                || (s.chunk_sectors.is_power_of_two() && s.chunk_sectors <= CHUNK_SECTORS_MAX);
            if !chunk_ok {
                return Err(format!("accepted chunk {} for {}", s.chunk_sectors, s.kind));
            }
            Ok(())
        }
        Command::Drop { name }
        | Command::Merge { name: Some(name) }
        | Command::Pause { name }
        | Command::Resume { name }
        | Command::Changes { name, .. } => name_ok(name),
        Command::Merge { name: None } | Command::Help => Ok(()),
    }
}

fn check_control_input(input: &[u8]) -> Result<(), String> {
    match parse_command(input).map_err(|e| e.to_string()) {
        Err(msg) if input.len() > CONTROL_WRITE_MAX && !msg.contains("too long") => Err(format!(
            "oversized input refused for another reason: {}",
            clip(&msg)
        )),
        Err(msg) => check_one_line(&msg),
        Ok(_) if input.len() > CONTROL_WRITE_MAX => Err("oversized input accepted".into()),
        Ok(command) => {
            check_command(&command)?;
            let text = render_command(&command);
            if text.len() > CONTROL_WRITE_MAX {
                return Ok(()); // spelled out (`N` -> `N 32`), it no longer fits one write
            }
            match parse_command(text.as_bytes()) {
                Ok(again) if again == command => Ok(()),
                other => Err(format!(
                    "{command:?} renders as {text:?}, which parses as {other:?}"
                )),
            }
        }
    }
}

#[test]
fn fuzz_control_commands() {
    for (k, input) in CONTROL_REGRESSIONS.iter().enumerate() {
        check_control_input(input).unwrap_or_else(|why| panic!("control regression {k}: {why}"));
    }
    for input in VALID_COMMANDS {
        let parsed = parse_command(input.as_bytes());
        assert!(parsed.is_ok(), "{input:?}: {parsed:?}");
        check_control_input(input.as_bytes()).unwrap();
    }
    let plan = plan(loader_iters() * PARSER_ITERS_PER_LOADER_ITER);
    let outcomes = drive("control", 2, &plan, |rng, i| {
        let input = control_input(rng);
        check_control_input(&input).map_err(|why| {
            let saved = save_failure(&format!("control-{i}.bin"), &input);
            let shown = clip(&String::from_utf8_lossy(&input));
            format!("{why}\n  input {shown:?} saved to {saved}")
        })?;
        Ok(match parse_command(&input) {
            Ok(command) => format!(
                "accepted {}",
                render_command(&command).split(' ').next().unwrap()
            ),
            Err(_) => "refused".to_string(),
        })
    });
    assert_outcomes("control", &plan, &outcomes, &["accepted", "refused"]);
}

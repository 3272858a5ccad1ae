//! Control commands written through a real mount: malformed, oversized, answers never torn; and
//! I/O at and past the end of the files.

use super::*;

// ----- control commands -----------------------------------------------------------------------

/// A mount with two snapshots (P `s1` and N `s2`) and some exceptions; returns the files whose
/// bytes must not change.
fn control_rig(s: &mut Scratch) -> Vec<PathBuf> {
    let origin = s.path("origin.img");
    write_random_image(&origin, 8 * MIB, 2);
    let (cow1, cow2, spare) = (s.path("s1.cow"), s.path("s2.cow"), s.path("spare.cow"));
    for c in [&cow1, &cow2, &spare] {
        sparse_file(c, 8 * MIB);
    }
    let specs = format!(
        "snapshot=s1:{}:P:8,snapshot=s2:{}:N:8",
        cow1.display(),
        cow2.display()
    );
    s.mount_daemon(&origin, &[&specs], &[]);
    open_rw(&s.file("origin"))
        .write_all_at(&Rng(3).bytes(256 * 1024), MIB)
        .unwrap();
    let images = hostile_images(2048);
    let mut files = write_images(s, &images);
    files.extend([origin, cow1, cow2, spare]);
    files
}

fn bad_control_commands(s: &Scratch) -> Vec<(Vec<u8>, i32, String)> {
    let einval = libc::EINVAL;
    let p = |name: &str| s.path(name).display().to_string();
    let mut cases: Vec<(Vec<u8>, i32, String)> = [
        ("\n", "empty command"),
        ("   \t \n", "empty command"),
        ("frobnicate", "unknown command"),
        ("SNAPSHOT a /x", "unknown command"),
        ("snapshot", "usage: snapshot"),
        ("snapshot a", "usage: snapshot"),
        ("snapshot a /x P 8 extra", "usage: snapshot"),
        ("snapshot a relative.cow", "not absolute"),
        ("snapshot a /x Q", "not P, PO or N"),
        ("snapshot a /x PX", "unsupported persistent store option"),
        ("snapshot a /x P 12", "not a power of 2"),
        ("snapshot a /x P eight", "Invalid chunk size"),
        ("snapshot a /x N 0", "Chunk size not set"),
        ("snapshot a /x P 4194304", "too high"),
        ("snapshot origin /x", "reserved"),
        ("snapshot status /x", "reserved"),
        ("snapshot control /x", "reserved"),
        ("snapshot a:b /x", "contains ':'"),
        ("snapshot .. /x", "not a file name"),
        ("drop", "usage: drop"),
        ("drop a b", "usage: drop"),
        ("drop origin", "reserved"),
        ("merge a b", "usage: merge"),
        ("merge control", "reserved"),
        ("help me", "usage: help"),
        ("drop s1\ndrop s2", "one command per write"),
        ("drop s1\n\n", "one command per write"),
        ("drop s1\0", "contains '\\0'"),
        ("drop nosuch", "no snapshot named nosuch"),
        ("merge nosuch", "no snapshot named nosuch"),
        ("merge", "which snapshot?"),
        ("snapshot x /nonexistent/x.cow", "/nonexistent/x.cow"),
    ]
    .iter()
    .map(|(c, n)| (c.as_bytes().to_vec(), einval, n.to_string()))
    .collect();
    cases.push((vec![0xff, 0xfe, b'\n'], einval, "not UTF-8".into()));
    let attach = |name: &str, cow: String, needle: &str| {
        (
            format!("snapshot {name} {cow} P 8").into_bytes(),
            einval,
            needle.to_string(),
        )
    };
    cases.push(attach("x", p("origin.img"), "in use"));
    cases.push(attach("x", p("s1.cow"), "in use"));
    cases.push(attach(
        "x",
        s.path("").display().to_string(),
        "not a regular file",
    ));
    cases.push(attach(
        "x",
        "/dev/null".into(),
        "not a regular file or block device",
    ));
    cases.push(attach("s1", p("spare.cow"), "already exists"));
    cases.push(attach("s2", p("spare.cow"), "already exists"));
    for (name, _, needle) in hostile_images(2048) {
        cases.push(attach("x", p(&format!("{name}.cow")), needle));
    }
    cases
}

/// Every malformed or impossible command fails with EINVAL (EBUSY for a merge of a busy
/// origin), `control` then says why in one line, and nothing changes.
#[test]
fn malformed_control_commands_fail_and_change_nothing() {
    let mut s = Scratch::new("h-control");
    let files = control_rig(&mut s);
    let before = state(&s, &files);
    let cases = bad_control_commands(&s);
    for (command, errno, needle) in &cases {
        let ctx = format!("{:?}", String::from_utf8_lossy(command));
        let (result, answer) = control_bytes(&s, command);
        assert_eq!(errno_of(result), Some(*errno), "{ctx}: {answer}");
        assert!(answer.starts_with("error: "), "{ctx}: {answer}");
        assert_eq!(answer.lines().count(), 1, "{ctx}: one line: {answer:?}");
        assert!(
            answer.contains(needle.as_str()),
            "{ctx}: {answer:?} should say {needle:?}"
        );
        assert_same_state(&before, &state(&s, &files), &ctx);
    }
    // A zero-length write never reaches snapfs (the kernel answers it): nothing changes.
    let (result, answer) = control_bytes(&s, b"");
    assert_eq!(result.unwrap(), 0);
    assert!(
        answer.starts_with("error: "),
        "still the last answer: {answer}"
    );
    // A merge while the origin is open: EBUSY, nothing changes.
    let held = File::open(s.file("origin")).unwrap();
    let (result, answer) = control_bytes(&s, b"merge s1\n");
    assert_eq!(errno_of(result), Some(libc::EBUSY), "{answer}");
    assert!(answer.contains("origin is open"), "{answer}");
    drop(held);
    assert_same_state(&before, &state(&s, &files), "merge while open");
    let (result, answer) = control_bytes(&s, b"help\n");
    result.unwrap();
    assert!(answer.starts_with("ok commands:"), "{answer}");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("control commands", cases.len() + 1);
}

#[test]
fn oversized_control_writes_are_refused() {
    let mut s = Scratch::new("h-control-size");
    let files = control_rig(&mut s);
    let before = state(&s, &files);
    let padded = |verb: &str, len: usize, pad: u8| {
        let mut v = verb.as_bytes().to_vec();
        v.resize(len, pad);
        v
    };
    let refused = [
        (
            padded("help", 4097, b' '),
            "command too long (4097 bytes; at most 4096)",
        ),
        (padded("drop s1", 64 * 1024, b' '), "command too long ("),
        (padded("drop s1", 1 << 20, b'\n'), "command too long ("),
        (padded("drop ", 4096, b'x'), "longer than 127 bytes"),
    ];
    for (command, needle) in &refused {
        let (result, answer) = control_bytes(&s, command);
        assert_eq!(
            errno_of(result),
            Some(libc::EINVAL),
            "{} bytes",
            command.len()
        );
        assert!(
            answer.starts_with("error: ") && answer.contains(needle),
            "{answer:?}"
        );
        assert_eq!(answer.lines().count(), 1);
        assert_same_state(
            &before,
            &state(&s, &files),
            &format!("{} bytes", command.len()),
        );
    }
    // Exactly the limit is fine, and so is a write at an offset (the offset is ignored).
    let (result, answer) = control_bytes(&s, &padded("help", 4096, b' '));
    assert_eq!(result.unwrap(), 4096);
    assert!(answer.starts_with("ok commands:"), "{answer}");
    let f = OpenOptions::new()
        .write(true)
        .open(s.file("control"))
        .unwrap();
    assert_eq!(
        f.write_at(b"drop nosuch", 12345)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    drop(f);
    assert!(
        std::fs::read_to_string(s.file("control"))
            .unwrap()
            .contains("no snapshot named nosuch")
    );
    assert_same_state(&before, &state(&s, &files), "after the limit cases");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("oversized control writes", refused.len() + 2);
}

/// A reader of `control` gets one whole answer: a command run between two reads of one handle
/// does not change what that handle reads (it used to give the head of one answer and the
/// tail of the next).
#[test]
fn control_answers_are_never_torn() {
    let mut s = Scratch::new("h-torn");
    let files = control_rig(&mut s);
    let before = state(&s, &files);
    let (result, first) = control_bytes(&s, b"drop nosuch");
    assert!(
        result.is_err() && first.starts_with("error: no snapshot named nosuch"),
        "{first}"
    );
    let reader = File::open(s.file("control")).unwrap();
    let mut head = [0u8; 10];
    assert_eq!(reader.read_at(&mut head, 0).unwrap(), 10);
    let (_, second) = control_bytes(&s, b"help");
    assert!(second.starts_with("ok commands:"), "{second}");
    let mut rest = vec![0u8; 8192];
    let n = reader.read_at(&mut rest, 10).unwrap();
    let whole = [&head[..], &rest[..n]].concat();
    assert_eq!(
        String::from_utf8_lossy(&whole),
        first,
        "the handle's answer is whole"
    );
    let mut again = vec![0u8; 8192];
    let n = reader.read_at(&mut again, 0).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again[..n]),
        second,
        "a read at 0 takes the latest"
    );
    drop(reader);
    assert_same_state(&before, &state(&s, &files), "reads change nothing");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("torn control answers", 2);
}

// ----- I/O at and past the end ----------------------------------------------------------------

/// Reads at and past the end return 0 bytes; writes reaching past it fail with ENOSPC and
/// change nothing (not even a copy-out). Offsets whose end overflows a signed 64-bit file
/// position are refused by the kernel itself (EINVAL) before snapfs sees them.
#[test]
fn io_at_and_past_the_end() {
    let mut s = Scratch::new("h-eof");
    let origin = s.path("origin.img");
    // 4 MiB + 1536 served; the 100 bytes of ragged tail are never touched.
    let initial = write_random_image(&origin, 4 * MIB + 1536 + 100, 4);
    let (p, n) = (s.path("p.cow"), s.path("n.cow"));
    sparse_file(&p, 8 * MIB);
    sparse_file(&n, 8 * MIB);
    let specs = format!(
        "snapshot=p:{}:P:8,snapshot=n:{}:N:8",
        p.display(),
        n.display()
    );
    s.mount_daemon(&origin, &[&specs], &[]);
    let size = 4 * MIB + 1536;
    let files = [origin.clone(), p.clone(), n.clone()];
    let before = state(&s, &files);
    let near_max = i64::MAX as u64;
    let reads = [size, size + 1, size + 4096, 1 << 40, near_max - 8192 - 1];
    let enospc = [
        (size - 1, 2),
        (size, 1),
        (size - 100, 8192),
        (size + 4096, 4096),
        (1 << 40, 10),
        (near_max - 100, 10),
    ];
    let einval = [(near_max - 5, 10), (near_max, 1)];
    let mut cases = 0;
    for name in ["origin", "p", "n"] {
        let f = open_rw(&s.file(name));
        assert_eq!(f.metadata().unwrap().len(), size, "{name}: size");
        let mut buf = vec![0u8; 8192];
        for offset in reads {
            assert_eq!(
                f.read_at(&mut buf, offset).unwrap(),
                0,
                "{name}: read at {offset}"
            );
        }
        assert_eq!(
            f.read_at(&mut buf, size - 1).unwrap(),
            1,
            "{name}: the last byte"
        );
        assert_eq!(buf[0], initial[size as usize - 1]);
        for (offset, len) in enospc {
            let r = f.write_at(&vec![0xee; len], offset);
            assert_eq!(
                errno_of(r),
                Some(libc::ENOSPC),
                "{name}: write {offset}+{len}"
            );
        }
        for (offset, len) in einval {
            let r = f.write_at(&vec![0xee; len], offset);
            assert_eq!(
                errno_of(r),
                Some(libc::EINVAL),
                "{name}: write {offset}+{len}"
            );
        }
        assert_eq!(
            f.write_at(&[], size + 10).unwrap(),
            0,
            "{name}: empty write past the end"
        );
        let r = fallocate(&f, 0, size - 512, 4096);
        assert_eq!(r, Err(libc::EOPNOTSUPP), "{name}: growing fallocate");
        fallocate(
            &f,
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_ZERO_RANGE,
            size,
            4096,
        )
        .unwrap();
        let err = f.set_len(size + 1).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EINVAL),
            "{name}: grow by truncate"
        );
        assert_same_state(&before, &state(&s, &files), name);
        assert_same(
            name,
            &std::fs::read(s.file(name)).unwrap(),
            &initial[..size as usize],
        );
        cases += reads.len() + 1 + enospc.len() + einval.len() + 4;
    }
    // A write ending exactly at the end works.
    open_rw(&s.file("origin"))
        .write_all_at(&[0x42; 512], size - 512)
        .unwrap();
    let mut model = initial.clone();
    model[size as usize - 512..size as usize].fill(0x42);
    assert_same(
        "p keeps the old end",
        &std::fs::read(s.file("p")).unwrap(),
        &initial[..size as usize],
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
    report("I/O at and past the end", cases + 1);
}

//! Socket ownership from the config: `socketOwner` / `socketGroup` as a numeric id or a name
//! resolved on this node (`getpwnam_r` / `getgrnam_r`), and `socketMode` as an octal string.

use std::ffi::CString;

use serde_json::Value;

use crate::error::CniError;

/// Which database a name is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    User,
    Group,
}

/// Resolves `socketOwner` (`field` names it in errors): a number, a string of digits, or a
/// user name known on this node.
pub fn resolve_user(field: &str, v: &Value) -> Result<u32, CniError> {
    resolve(field, v, Db::User)
}

/// Resolves `socketGroup`: a number, a string of digits, or a group name known on this node.
pub fn resolve_group(field: &str, v: &Value) -> Result<u32, CniError> {
    resolve(field, v, Db::Group)
}

fn resolve(field: &str, v: &Value, db: Db) -> Result<u32, CniError> {
    let what = match db {
        Db::User => "a uid or a user name",
        Db::Group => "a gid or a group name",
    };
    let bad = |details: String| {
        CniError::config(
            format!("{field} must be {what} that exists on this node"),
            details,
        )
    };
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n != u32::MAX)
            .ok_or_else(|| bad(format!("got {n}"))),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u32>()
            .ok()
            .filter(|n| *n != u32::MAX)
            .ok_or_else(|| bad(format!("got {s:?}"))),
        Value::String(s) => lookup(s, db)?.ok_or_else(|| {
            bad(format!(
                "no {} named {s:?} in the node's {}",
                if db == Db::User { "user" } else { "group" },
                if db == Db::User {
                    "passwd database"
                } else {
                    "group database"
                }
            ))
        }),
        other => Err(bad(format!("got {other}"))),
    }
}

/// Looks `name` up; `Ok(None)` when it does not exist.
fn lookup(name: &str, db: Db) -> Result<Option<u32>, CniError> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        let mut found: bool = false;
        let mut id: u32 = 0;
        let rc = match db {
            Db::User => {
                // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids).
                let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
                let mut out: *mut libc::passwd = std::ptr::null_mut();
                // SAFETY: `cname` is NUL-terminated; `pw`, `buf` (with its true length) and
                // `out` are live locals for the whole call; the strings `pw` points to live in
                // `buf`, and only the numeric uid is read after the call.
                let rc = unsafe {
                    libc::getpwnam_r(
                        cname.as_ptr(),
                        &mut pw,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut out,
                    )
                };
                if rc == 0 && !out.is_null() {
                    found = true;
                    id = pw.pw_uid;
                }
                rc
            }
            Db::Group => {
                // SAFETY: all-zero bytes are a valid `group` (null pointers, zero id).
                let mut gr: libc::group = unsafe { std::mem::zeroed() };
                let mut out: *mut libc::group = std::ptr::null_mut();
                // SAFETY: as for getpwnam_r above: NUL-terminated name, live buffers with
                // their real sizes, only the numeric gid is read afterwards.
                let rc = unsafe {
                    libc::getgrnam_r(
                        cname.as_ptr(),
                        &mut gr,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut out,
                    )
                };
                if rc == 0 && !out.is_null() {
                    found = true;
                    id = gr.gr_gid;
                }
                rc
            }
        };
        match rc {
            0 => return Ok(found.then_some(id)),
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => {
                return Err(CniError::config(
                    format!("cannot look up {name:?} in the node's user or group database"),
                    std::io::Error::from_raw_os_error(e).to_string(),
                ))
            }
        }
    }
}

/// Parses `socketMode`: an octal string such as `"0660"` (a leading `0o` is accepted), at
/// most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, CniError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    (!digits.is_empty() && digits.len() <= 4 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            CniError::config(
                "socketMode must be an octal mode string such as \"0660\" (at most \"0777\")",
                format!("got {s:?}"),
            )
        })
}

/// The socket directory's mode for a socket mode: every class that may read or write the
/// socket also gets search (`x`) on the directory, so `"0660"` gives a `0770` directory.
pub fn dir_mode(socket_mode: u32) -> u32 {
    let mut m = socket_mode & 0o777;
    for shift in [6, 3, 0] {
        if (m >> shift) & 0o6 != 0 {
            m |= 1 << shift;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_names_resolve() {
        assert_eq!(resolve_user("socketOwner", &json!(1000)).unwrap(), 1000);
        assert_eq!(resolve_user("socketOwner", &json!("1000")).unwrap(), 1000);
        assert_eq!(resolve_user("socketOwner", &json!("root")).unwrap(), 0);
        assert_eq!(resolve_group("socketGroup", &json!("root")).unwrap(), 0);
        for bad in [
            json!(-1),
            json!("no-such-user-heddle"),
            json!(true),
            json!(""),
            json!(4294967295u64),
        ] {
            let e = resolve_user("socketOwner", &bad).unwrap_err();
            assert_eq!(e.code, 7, "{bad}: {e}");
            assert!(e.msg.contains("socketOwner"), "{}", e.msg);
        }
        let e = resolve_group("socketGroup", &json!("no-such-group-heddle")).unwrap_err();
        assert!(e.details.contains("no group named"), "{}", e.details);
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert_eq!(parse_mode("770").unwrap(), 0o770);
        for bad in ["", "0999", "01777", "rw-rw----", "0o", "-660"] {
            assert_eq!(parse_mode(bad).unwrap_err().code, 7, "{bad}");
        }
        assert_eq!(dir_mode(0o660), 0o770);
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o770), 0o770);
    }
}

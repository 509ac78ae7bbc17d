//! Containing panics of the storage engine. sled 0.34 panics on some damaged files instead of
//! returning an error (a flipped byte in a read-model store once gave "tried to serialize
//! Uninitialized" and exit 101). Opening and scanning a store runs under [`contain_panic`]: a
//! panic on this thread becomes an `Err` with its message, and the panic hook prints nothing
//! for it (no backtrace on the user's terminal), so the caller can report the damaged store by
//! name and say how to rebuild it.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// True while this thread runs inside [`contain_panic`].
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
    /// The message and location of the last panic contained on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that stays silent for panics inside
/// [`contain_panic`] on the panicking thread and hands every other panic to the hook that was
/// installed before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CONTAINING.with(Cell::get) {
                let message = panic_message(info.payload());
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(message + &at.unwrap_or_default()));
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Runs `f`; a panic inside it becomes `Err(message)` ("panic: <message> at <file:line>"),
/// printed by no one. For code that touches storage engine files only: state shared with `f`
/// may be half-updated after a panic, so drop whatever `f` was building.
pub fn contain_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = CONTAINING.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(outer));
    result.map_err(|payload| {
        let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
        format!("panic: {}", recorded.unwrap_or_else(|| panic_message(payload.as_ref())))
    })
}

#[cfg(test)]
mod tests {
    use super::contain_panic;

    #[test]
    fn a_panic_inside_becomes_an_error_with_its_message() {
        let err = contain_panic(|| -> u32 { panic!("tried to serialize Uninitialized") })
            .expect_err("the panic is contained");
        assert!(err.starts_with("panic: tried to serialize Uninitialized at "), "{err}");
        assert!(err.contains("contain.rs"), "names where it panicked: {err}");
    }

    #[test]
    fn a_value_passes_through_and_nesting_restores_the_outer_state() {
        let inner = contain_panic(|| contain_panic(|| 7_u32));
        assert_eq!(inner, Ok(Ok(7)));
        let after = contain_panic(|| {
            let _ = contain_panic(|| panic!("inner"));
            panic!("outer")
        });
        assert!(after.expect_err("outer contained").contains("outer"));
    }
}

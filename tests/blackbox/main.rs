//! Black-box tests: the real binary and the real browser, with fake model and chat servers.

mod cdp;
mod webchat_page;

//! The legacy x_tables (`ip_tables`, `ip6_tables`) state of the calling thread's network
//! namespace, as `iptables-legacy-save` finds it: the tables that exist are listed in
//! `/proc/thread-self/net/ip_tables_names` (`ip6_tables_names`), and only those are read, so
//! looking never creates a table (asking the kernel for one that does not exist would).

/// The legacy tables that exist in this thread's network namespace (`nat`, `filter`, ...), for
/// IPv4 or IPv6; none when the x_tables modules are not loaded.
pub fn legacy_tables(v6: bool) -> Vec<String> {
    let file = if v6 { "ip6_tables_names" } else { "ip_tables_names" };
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

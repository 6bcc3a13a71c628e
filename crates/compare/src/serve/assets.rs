//! The dashboard's files, embedded in the binary (users run it offline: no CDN). The charts are
//! SVG drawn by `chart.js`, our own script, which the static HTML report inlines too.

pub const INDEX_HTML: &str = include_str!("../../assets/index.html");
pub const APP_JS: &str = include_str!("../../assets/app.js");
pub const ERRORS_JS: &str = include_str!("../../assets/errors.js");
pub const CHART_JS: &str = include_str!("../../assets/chart.js");
pub const REPORT_JS: &str = include_str!("../../assets/report.js");
pub const STYLE: &str = include_str!("../../assets/style.css");

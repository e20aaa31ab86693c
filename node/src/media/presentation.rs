//! How a download presents itself to whoever opens it, decided once for both
//! backends: the embedded store sends these headers itself, and S3 download
//! URLs sign them in as `response-content-type` and
//! `response-content-disposition`, which S3 (and compatible stores) answer
//! with in place of what the uploader declared (docs/media.md, "Downloads are
//! safe to open").

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The `Content-Type` and `Content-Disposition` a download is served with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Presentation {
    pub(crate) content_type: String,
    pub(crate) disposition: String,
}

/// What a type that is not [`inline_safe`] is served as: bytes to save, which
/// no browser renders or sniffs.
const OPAQUE_TYPE: &str = "application/octet-stream";

/// RFC 8187 `attr-char`s stay as they are; every other byte of the UTF-8
/// name is percent-encoded.
const NOT_ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

impl Presentation {
    /// For an attachment recorded as `content_type`, named `name` by its
    /// uploader. Media a browser may show in place keeps its type and is
    /// `inline`; everything else is an `attachment` of
    /// `application/octet-stream`, so an uploaded HTML page or SVG is saved,
    /// never rendered on the store's origin. The name (RFC 6266 `filename*`,
    /// UTF-8) is what a browser saves the file as.
    pub(crate) fn of(content_type: &str, name: Option<&str>) -> Self {
        let inline = inline_safe(content_type);
        let mut disposition = String::from(if inline { "inline" } else { "attachment" });
        if let Some(name) = name {
            disposition.push_str("; filename*=UTF-8''");
            disposition.extend(utf8_percent_encode(name, NOT_ATTR_CHAR));
        }
        Self {
            content_type: match inline {
                true => content_type.to_owned(),
                false => OPAQUE_TYPE.to_owned(),
            },
            disposition,
        }
    }
}

/// Types a browser may show in place: raster images, audio and video. SVG (a
/// document with scripts), HTML, PDF and the rest are downloaded instead.
fn inline_safe(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    matches!(
        essence,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "image/avif" | "image/bmp"
    ) || essence.starts_with("audio/")
        || essence.starts_with("video/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raster_images_audio_and_video_open_inline() {
        for ct in [
            "image/png",
            "IMAGE/JPEG",
            "image/webp",
            "audio/ogg",
            "video/mp4",
        ] {
            assert!(inline_safe(ct), "{ct}");
        }
        for ct in [
            "image/svg+xml",
            "text/html",
            "application/xhtml+xml",
            "application/pdf",
            "text/plain",
            "application/octet-stream",
        ] {
            assert!(!inline_safe(ct), "{ct}");
        }
    }

    #[test]
    fn the_rest_is_an_opaque_attachment_under_its_name() {
        assert_eq!(
            Presentation::of("text/html", Some("page.html")),
            Presentation {
                content_type: OPAQUE_TYPE.into(),
                disposition: "attachment; filename*=UTF-8''page.html".into(),
            }
        );
        assert_eq!(
            Presentation::of("image/svg+xml", None),
            Presentation {
                content_type: OPAQUE_TYPE.into(),
                disposition: "attachment".into(),
            }
        );
        assert_eq!(
            Presentation::of("image/png", Some("cat.png")),
            Presentation {
                content_type: "image/png".into(),
                disposition: "inline; filename*=UTF-8''cat.png".into(),
            }
        );
    }

    #[test]
    fn names_are_encoded_so_they_cannot_break_the_header() {
        let p = Presentation::of("text/plain", Some("Grüße; \"a\" b,c=d'€.txt"));
        assert_eq!(
            p.disposition,
            "attachment; filename*=UTF-8''Gr%C3%BC%C3%9Fe%3B%20%22a%22%20b%2Cc%3Dd%27%E2%82%AC.txt"
        );
        assert!(
            p.disposition
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        );
    }
}

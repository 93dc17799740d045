/* larderd GET /ui: the dashboard, compiled in from ui/ (see ui/embed.py and
 * docs/dashboard.md). Nothing is fetched from elsewhere: the policy below allows the
 * page's own scripts, styles and API only. */
#include <stdlib.h>
#include <string.h>

#include "routes.h"
#include "ui-assets.h"

/* No inline script or style, nothing from another origin, no framing. */
static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                          "form-action 'none'; frame-ancestors 'none'";

static const struct larder__ui_asset *find_asset(const char *name)
{
    for (size_t i = 0; i < larder__ui_n_assets; i++)
        if (strcmp(larder__ui_assets[i].name, name) == 0)
            return &larder__ui_assets[i];
    return NULL;
}

/* Does an If-None-Match header name this ETag (or "*")? */
static bool etag_matches(const char *inm, const char *etag)
{
    size_t n = strlen(etag);
    for (const char *p = inm; p && *p;) {
        p += strspn(p, " \t,");
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (*p == '*' || (strncmp(p, etag, n) == 0 && (p[n] == 0 || strchr(" \t,", p[n]))))
            return true;
        p = strchr(p, ',');
    }
    return false;
}

void larder__route_ui(struct larder__request *r, const char *name)
{
    /* /ui is the page itself; /ui/FILE one of its files */
    const struct larder__ui_asset *a = find_asset(strcmp(r->route, "ui") == 0 ? "index.html"
                                                                              : name);
    if (!a) {
        larder__reply_error(r, 404, "not_found", "no route %s", r->url);
        return;
    }
    bool fresh = etag_matches(larder__request_header(r, "If-None-Match"), a->etag);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        fresh ? 0 : a->len, fresh ? NULL : (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    if (!fresh)
        MHD_add_response_header(resp, "Content-Type", a->content_type);
    larder__reply_response(r, fresh ? 304 : 200, resp);
    larder__reply_header(r, "ETag", a->etag);
    /* Compiled in: it changes only with larderd, so revalidating is cheap and safe. */
    larder__reply_header(r, "Cache-Control", "no-cache");
    larder__reply_header(r, "Content-Security-Policy", csp);
    larder__reply_header(r, "X-Content-Type-Options", "nosniff");
    larder__reply_header(r, "Referrer-Policy", "no-referrer");
    larder__reply_header(r, "X-Frame-Options", "DENY");
}

package serve

import (
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/helixflow/helixflow/internal/apierror"
)

// corsMaxAge is how long a browser may reuse a preflight's answer (seconds).
const corsMaxAge = "600"

// corsRoutes are the routes a page of another origin may call (CORS), besides
// /v1/models/{model}. GET /v1/stream checks its Origin itself, as a WebSocket handshake has
// no preflight.
var corsRoutes = map[string]bool{
	"/v1/models": true, RouteChatCompletions: true, RouteCompletions: true, RouteEmbeddings: true,
}

func isCORSRoute(path string) bool {
	return corsRoutes[path] || strings.HasPrefix(path, "/v1/models/")
}

// cors lets pages of the allowed browser origins (the WebSocket's: --websocket-origins and
// spec.auth.allowedOrigins, and the runtime's own host) call the HTTP API with fetch: it
// answers their preflights, and marks the answers to them readable. A page of another origin
// gets a 403 to its preflight, so the browser never sends the call itself. Requests without
// an Origin (SDKs, curl) are not concerned: the fast path serves them, and hands those with
// an Origin to net/http, hence here.
//
// The credential is a header the page sets (Authorization), never a cookie, so no
// Access-Control-Allow-Credentials: a page can only use a key it already holds.
func (s *Server) cors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || !isCORSRoute(r.URL.Path) {
			h.ServeHTTP(w, r)
			return
		}
		hdr := w.Header()
		hdr.Add("Vary", "Origin")
		allowed := originAllowed(origin, r.Host, s.originPatterns())
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			if !allowed {
				apierror.Write(w, http.StatusForbidden, apierror.TypePermission, "origin_not_allowed",
					"pages of this origin may not call the API: add it to the InferenceModel's spec.auth.allowedOrigins")
				return
			}
			hdr.Add("Vary", "Access-Control-Request-Method")
			hdr.Add("Vary", "Access-Control-Request-Headers")
			hdr.Set("Access-Control-Allow-Origin", origin)
			hdr.Set("Access-Control-Allow-Methods", "GET, POST")
			// Whatever the page asks to send (the OpenAI SDK sends its own X-Stainless-*
			// headers besides Authorization): none of them is trusted for anything.
			if asked := r.Header.Get("Access-Control-Request-Headers"); asked != "" {
				hdr.Set("Access-Control-Allow-Headers", asked)
			}
			hdr.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if allowed {
			allowReading(hdr, origin)
		}
		h.ServeHTTP(w, r)
	})
}

// allowReading lets a page of origin read the answer (and its Retry-After).
func allowReading(hdr http.Header, origin string) {
	hdr.Set("Access-Control-Allow-Origin", origin)
	hdr.Set("Access-Control-Expose-Headers", "Retry-After")
}

// headCORS is what cors adds to an answer, for a request of which only head, the start of
// its head, was read: the fast path refuses a head over the cap before parsing it, and a
// page of an allowed origin should read that 431 rather than see a network error. Only
// whole lines count (the last may have been cut).
func (s *Server) headCORS(head []byte) http.Header {
	lines := strings.Split(string(head), "\n")
	if len(lines) < 2 { // the request line itself was cut
		return nil
	}
	target := strings.Fields(lines[0])
	if len(target) < 2 {
		return nil
	}
	route, _, _ := strings.Cut(target[1], "?")
	var origin, host string
	for _, line := range lines[1 : len(lines)-1] {
		name, value, ok := strings.Cut(line, ":")
		switch {
		case !ok:
		case strings.EqualFold(name, "Origin") && origin == "": // the first, as Header.Get
			origin = strings.TrimSpace(value)
		case strings.EqualFold(name, "Host") && host == "":
			host = strings.TrimSpace(value)
		}
	}
	if origin == "" || !isCORSRoute(route) {
		return nil
	}
	hdr := http.Header{"Vary": {"Origin"}}
	if originAllowed(origin, host, s.originPatterns()) {
		allowReading(hdr, origin)
	}
	return hdr
}

// originPatterns are the browser origins allowed besides the runtime's own host.
func (s *Server) originPatterns() []string {
	flag, model := s.opts.WebSocket.OriginPatterns, s.model.Load().origins
	if len(flag) == 0 {
		return model
	}
	return append(append(make([]string, 0, len(flag)+len(model)), flag...), model...)
}

// originAllowed reports whether a page of origin may call, by the rules of the WebSocket's
// check (github.com/coder/websocket's AcceptOptions.OriginPatterns), so both fronts agree: the
// runtime's own host, or a pattern matched with path.Match, case-insensitively, against the
// origin's host, or against scheme://host when the pattern has a scheme.
func originAllowed(origin, host string, patterns []string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

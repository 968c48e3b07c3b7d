"""A site's app server for bench/appfailover.sh: answers every GET with 200 and the site's name."""
import http.server
import sys

host, port, site = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(site)))
        self.end_headers()
        self.wfile.write(site)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer((host, port), H).serve_forever()

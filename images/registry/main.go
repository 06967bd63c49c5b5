// Command sluice-registry is an OCI distribution registry for the local cluster: the
// go-containerregistry registry handler with blobs on disk (manifests stay in memory), bound to
// a loopback address only. It prints "listening on 127.0.0.1:<port>" once it accepts
// connections and stops when its stdin closes, so it never outlives the test process that
// started it.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "loopback address to listen on (port 0: any free port)")
	dir := flag.String("dir", "", "folder for blobs (required)")
	flag.Parse()
	if *dir == "" {
		log.Fatal("--dir is required")
	}
	if !strings.HasPrefix(*addr, "127.") {
		log.Fatalf("--addr %s is not a loopback address", *addr)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	go func() {
		// Stop when the parent closes our stdin (or dies).
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	server := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: registry.New(
			registry.WithBlobHandler(registry.NewDiskBlobHandler(*dir)),
			registry.Logger(log.New(io.Discard, "", 0)),
		),
	}
	log.Fatal(server.Serve(listener))
}

package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd runs a single-member etcd cluster in this process until SIGINT or
// SIGTERM. Plain HTTP on loopback only: it is reachable by local processes,
// which is acceptable for a disposable test cluster.
func runEtcd(args []string) error {
	fs := flag.NewFlagSet(compEtcd, flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "etcd data directory (required)")
	clientURL := fs.String("client-url", "", "client URL, e.g. http://127.0.0.1:2379 (required)")
	peerURL := fs.String("peer-url", "", "peer URL, e.g. http://127.0.0.1:2380 (required)")
	noFsync := fs.Bool("unsafe-no-fsync", false, "disable fsync (faster; data may be lost on an OS crash)")
	logLevel := fs.String("log-level", "warn", "etcd log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" || *clientURL == "" || *peerURL == "" {
		return fmt.Errorf("--data-dir, --client-url and --peer-url are required")
	}
	client, err := url.Parse(*clientURL)
	if err != nil {
		return fmt.Errorf("--client-url: %w", err)
	}
	peer, err := url.Parse(*peerURL)
	if err != nil {
		return fmt.Errorf("--peer-url: %w", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = "sluice"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *noFsync
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: serving clients on %s\n", client)
	case err := <-e.Err():
		return fmt.Errorf("etcd failed while starting: %w", err)
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "etcd: %v before ready, shutting down\n", s)
		return nil
	}
	select {
	case err := <-e.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "etcd: %v, shutting down\n", s)
		return nil // deferred Close stops the server cleanly
	}
}

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

const (
	serviceCIDR        = "10.96.0.0/16"
	serviceAccountIss  = "https://kubernetes.default.svc"
	stopGrace          = 10 * time.Second // per component, then SIGKILL
	pollInterval       = 100 * time.Millisecond
	etcdTimeout        = 60 * time.Second
	apiserverTimeout   = 3 * time.Minute
	controllersTimeout = 2 * time.Minute
)

// interrupted is the cancellation cause for SIGINT/SIGTERM: a clean exit.
type interrupted struct{ sig os.Signal }

func (i interrupted) Error() string { return "received " + i.sig.String() }

// runUp is the `up` subcommand: it brings the whole control plane up in the
// foreground, prints one READY line on stdout, and tears everything down on
// SIGINT/SIGTERM or when any component dies.
func runUp(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	stateDirFlag := fs.String("state-dir", "", "directory for PKI, kubeconfigs, etcd data and logs (required; reused if it exists)")
	etcdPort := fs.Int("etcd-port", 0, "etcd client port on 127.0.0.1 (0 = pick a free one)")
	apiPort := fs.Int("apiserver-port", 0, "kube-apiserver secure port on 127.0.0.1 (0 = pick a free one)")
	stopOnEOF := fs.Bool("stop-on-stdin-eof", false, "stop when stdin reaches EOF, i.e. when the parent process that holds the pipe exits")
	removeState := fs.Bool("remove-state-dir", false, "delete the state directory after stopping")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stateDirFlag == "" || fs.NArg() > 0 {
		return errors.New("usage: up --state-dir DIR [--etcd-port N] [--apiserver-port N] [--stop-on-stdin-eof] [--remove-state-dir]")
	}
	t0 := time.Now()

	dir, err := filepath.Abs(*stateDirFlag)
	if err != nil {
		return err
	}
	if *removeState {
		defer os.RemoveAll(dir)
	}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	readyFile := filepath.Join(dir, "ready")
	if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}

	// Ports: etcd client, etcd peer, apiserver, controller-manager, scheduler.
	ports, err := freePorts(*etcdPort, 0, *apiPort, 0, 0)
	if err != nil {
		return err
	}
	cp := &controlPlane{
		dir:        dir,
		etcdURL:    "http://127.0.0.1:" + strconv.Itoa(ports[0]),
		etcdPeer:   "http://127.0.0.1:" + strconv.Itoa(ports[1]),
		server:     "https://127.0.0.1:" + strconv.Itoa(ports[2]),
		apiPort:    ports[2],
		cmPort:     ports[3],
		schedPort:  ports[4],
		kubeconfig: filepath.Join(dir, "kubeconfig"),
	}
	if err := cp.writeCredentials(); err != nil {
		return err
	}
	logf("PKI and kubeconfigs ready in %s", since(t0))

	self, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	cp.sup = &supervisor{self: self, logDir: logDir, failed: cancel}

	// First signal: orderly shutdown. Second signal: kill everything now.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		cancel(interrupted{<-sigs})
		<-sigs
		logf("second signal, killing all components")
		cp.sup.killAll()
	}()
	if *stopOnEOF {
		// Tests hold our stdin open; when the test process exits (even killed), the pipe closes.
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel(interrupted{syscall.SIGHUP})
		}()
	}

	err = cp.start(ctx, t0)
	if err == nil {
		// SIGUSR1: restart the kube-apiserver (same flags, port and etcd), for tests of
		// clients that must ride out an API server restart.
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		go func() {
			for range usr1 {
				t := time.Now()
				logf("SIGUSR1: restarting %s", compAPIServer)
				fresh, err := cp.sup.restart(cp.apiserver, stopGrace)
				if err != nil {
					cancel(err)
					return
				}
				cp.apiserver = fresh
				if err := waitReady(ctx, t, check{fresh, "", cp.admin, cp.server + "/readyz", apiserverTimeout}); err != nil {
					cancel(err)
					return
				}
				logf("%s restarted in %s", compAPIServer, since(t))
			}
		}()
		line := fmt.Sprintf("READY kubeconfig=%s server=%s", cp.kubeconfig, cp.server)
		if err = writeFileAtomic(readyFile, []byte(line+"\n")); err == nil {
			logf("control plane ready in %s", since(t0))
			fmt.Println(line)
			<-ctx.Done()
			err = context.Cause(ctx)
		}
	}

	logf("stopping (%v)", err)
	cp.sup.stopAll(stopGrace)
	_ = os.Remove(readyFile)
	var sig interrupted
	if errors.As(err, &sig) {
		logf("stopped cleanly")
		return nil
	}
	return err
}

// controlPlane holds the addresses and paths of one `up` run.
type controlPlane struct {
	dir                        string
	etcdURL, etcdPeer, server  string
	apiPort, cmPort, schedPort int
	kubeconfig                 string
	pki                        *pki
	admin                      *http.Client // admin client cert, verifies the apiserver against the CA
	sup                        *supervisor
	apiserver                  *child // the running kube-apiserver (replaced by a restart)
}

func (cp *controlPlane) path(elem ...string) string {
	return filepath.Join(append([]string{cp.dir}, elem...)...)
}

// writeCredentials creates (or reuses) the PKI and writes the kubeconfigs.
func (cp *controlPlane) writeCredentials() error {
	_, svcNet, err := net.ParseCIDR(serviceCIDR)
	if err != nil {
		return err
	}
	serviceIP := make(net.IP, len(svcNet.IP))
	copy(serviceIP, svcNet.IP)
	serviceIP[len(serviceIP)-1]++ // first service IP (10.96.0.1): the `kubernetes` Service
	if cp.pki, err = ensurePKI(cp.path("pki"), serviceIP); err != nil {
		return fmt.Errorf("PKI: %w", err)
	}
	for _, kc := range []struct {
		path string
		cert *keyPair
		user string
	}{
		{cp.kubeconfig, cp.pki.Admin, "sluice-admin"},
		{cp.path("controller-manager.kubeconfig"), cp.pki.ControllerManager, "system:kube-controller-manager"},
		{cp.path("scheduler.kubeconfig"), cp.pki.Scheduler, "system:kube-scheduler"},
	} {
		if err := writeKubeconfig(kc.path, cp.server, cp.pki.CA, kc.cert, kc.user); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", kc.path, err)
		}
	}

	adminCert, err := tls.X509KeyPair(cp.pki.Admin.CertPEM, cp.pki.Admin.KeyPEM)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cp.pki.CA.CertPEM)
	cp.admin = newHTTPClient(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{adminCert}})
	return nil
}

// start launches the components in dependency order and waits until the
// cluster is usable. It returns early with the cause when ctx is cancelled
// (signal or a component died).
func (cp *controlPlane) start(ctx context.Context, t0 time.Time) error {
	etcd, err := cp.sup.start(compEtcd,
		"--data-dir="+cp.path("etcd"),
		"--client-url="+cp.etcdURL,
		"--peer-url="+cp.etcdPeer,
		"--unsafe-no-fsync", // throwaway test data: skip fsync for speed
	)
	if err != nil {
		return err
	}
	plain := newHTTPClient(nil)
	if err := waitReady(ctx, t0, check{etcd, "", plain, cp.etcdURL + "/health", etcdTimeout}); err != nil {
		return err
	}

	p := cp.pki
	apiserver, err := cp.sup.start(compAPIServer,
		"--etcd-servers="+cp.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The lease reconciler refuses a loopback advertise address (it would
		// publish it as the `kubernetes` Service's endpoint): publish none.
		"--endpoint-reconciler-type=none",
		"--secure-port="+strconv.Itoa(cp.apiPort),
		"--cert-dir="+cp.path("pki", "apiserver-generated"), // unused: serving cert given below
		"--tls-cert-file="+p.APIServer.CertFile,
		"--tls-private-key-file="+p.APIServer.KeyFile,
		"--client-ca-file="+p.CA.CertFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-key-file="+p.SAPubFile,
		"--service-account-signing-key-file="+p.SAKeyFile,
		"--service-account-issuer="+serviceAccountIss,
		"--api-audiences="+serviceAccountIss,
		"--service-cluster-ip-range="+serviceCIDR,
		// Aggregation layer / requestheader authentication. Without it the
		// controller-manager and scheduler log errors about a missing
		// requestheader CA, and aggregated APIs (metrics, custom metrics) fail.
		"--requestheader-client-ca-file="+p.FrontProxyCA.CertFile,
		"--requestheader-allowed-names="+frontProxyClientCN,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+p.FrontProxyClient.CertFile,
		"--proxy-client-key-file="+p.FrontProxyClient.KeyFile,
		"--allow-privileged=true",
		"--profiling=false",
		// Admission: the upstream default set (NamespaceLifecycle, LimitRanger,
		// ServiceAccount, DefaultTolerationSeconds, ResourceQuota, PodSecurity,
		// webhooks, ...). NodeRestriction is not in it, so a test kubelet
		// using the admin kubeconfig is not restricted.
	)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, t0, check{apiserver, "", cp.admin, cp.server + "/readyz", apiserverTimeout}); err != nil {
		return err
	}
	cp.apiserver = apiserver

	cm, err := cp.sup.start(compControllerManager,
		"--kubeconfig="+cp.path("controller-manager.kubeconfig"),
		"--authentication-kubeconfig="+cp.path("controller-manager.kubeconfig"),
		"--authorization-kubeconfig="+cp.path("controller-manager.kubeconfig"),
		"--service-account-private-key-file="+p.SAKeyFile,
		"--root-ca-file="+p.CA.CertFile,
		"--use-service-account-credentials=true",
		"--cluster-signing-cert-file="+p.CA.CertFile,
		"--cluster-signing-key-file="+p.CA.KeyFile,
		"--controllers=*", // every controller enabled by default; none needs a cloud provider since 1.31
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(cp.cmPort),
		// Default is /usr/libexec/kubernetes/...: keep all writes in the state dir.
		"--flex-volume-plugin-dir="+cp.path("flexvolume"),
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	sched, err := cp.sup.start(compScheduler,
		"--kubeconfig="+cp.path("scheduler.kubeconfig"),
		"--authentication-kubeconfig="+cp.path("scheduler.kubeconfig"),
		"--authorization-kubeconfig="+cp.path("scheduler.kubeconfig"),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(cp.schedPort),
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	// The components' self-signed serving certs are not verified for this
	// local health check; /healthz is always allowed by their authorizers.
	insecure := newHTTPClient(&tls.Config{InsecureSkipVerify: true})
	return waitReady(ctx, t0,
		check{cm, "", insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", cp.cmPort), controllersTimeout},
		check{sched, "", insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", cp.schedPort), controllersTimeout},
		// Created by the serviceaccount controller: proves controllers act.
		check{cm, "default ServiceAccount", cp.admin, cp.server + "/api/v1/namespaces/default/serviceaccounts/default", controllersTimeout},
	)
}

// check is a readiness probe: GET url must answer 200 within timeout of the
// component's start.
type check struct {
	comp    *child
	what    string // defaults to the component's name
	client  *http.Client
	url     string
	timeout time.Duration
}

// waitReady polls all checks until each passed, logging the time each took
// (since its component started, and since `up` started).
func waitReady(ctx context.Context, t0 time.Time, checks ...check) error {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		var pending []check
		for _, c := range checks {
			what := c.what
			if what == "" {
				what = c.comp.name
			}
			switch {
			case httpOK(ctx, c.client, c.url):
				logf("%s ready after %s (%s since up started)", what, since(c.comp.started), since(t0))
			case time.Since(c.comp.started) > c.timeout:
				return fmt.Errorf("%s not ready after %s (GET %s); see %s", what, c.timeout, c.url, c.comp.logPath)
			default:
				pending = append(pending, c)
			}
		}
		if checks = pending; len(checks) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-ticker.C:
		}
	}
}

func httpOK(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// writeFileAtomic writes via a temporary file and a rename, so a reader
// polling for path never sees it half-written.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func newHTTPClient(tlsConfig *tls.Config) *http.Client {
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: nil},
	}
}

// freePorts returns want with every 0 replaced by a distinct free port on
// 127.0.0.1. All probe listeners stay open until every port is picked, so
// the picked ports differ from each other.
func freePorts(want ...int) ([]int, error) {
	ports := append([]int(nil), want...)
	for i, p := range ports {
		if p != 0 {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const certValidity = 10 * 365 * 24 * time.Hour

// keyPair is a PEM certificate and its PKCS#8 PEM private key, both on disk.
type keyPair struct {
	CertFile, KeyFile string
	CertPEM, KeyPEM   []byte
}

// pki holds every credential of the cluster, stored under <state-dir>/pki.
// Files that already exist are reused, so restarting `up` on the same state
// dir keeps the cluster's identity (and the etcd data stays valid).
type pki struct {
	CA                   *keyPair // signs everything below except FrontProxyClient; also the cluster-signing CA
	APIServer            *keyPair // apiserver serving certificate
	Admin                *keyPair // CN=sluice-admin, O=system:masters
	ControllerManager    *keyPair // CN=system:kube-controller-manager
	Scheduler            *keyPair // CN=system:kube-scheduler
	FrontProxyCA         *keyPair // requestheader CA (aggregation layer), as kubeadm does
	FrontProxyClient     *keyPair // apiserver's client cert towards aggregated API servers
	SAKeyFile, SAPubFile string   // service-account token signing key pair (RSA)
}

// certSpec describes one certificate to issue.
type certSpec struct {
	CommonName string
	Orgs       []string
	IsCA       bool
	Usage      x509.ExtKeyUsage // ignored for a CA
	DNSNames   []string
	IPs        []net.IP
}

// issuer is a parsed CA able to sign certificates.
type issuer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// frontProxyClientCN is the only name the apiserver accepts as a requestheader
// (front proxy) client.
const frontProxyClientCN = "front-proxy-client"

// ensurePKI loads or creates every credential in dir (see pki). TLS keys are
// ECDSA P-256, which is fast to create; the service-account key is RSA.
func ensurePKI(dir string, serviceIP net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{}
	ca, err := ensureCA(dir, "ca", "sluice-test-ca", &p.CA)
	if err != nil {
		return nil, err
	}
	frontProxyCA, err := ensureCA(dir, "front-proxy-ca", "sluice-test-front-proxy-ca", &p.FrontProxyCA)
	if err != nil {
		return nil, err
	}

	client := func(cn string, orgs ...string) certSpec {
		return certSpec{CommonName: cn, Orgs: orgs, Usage: x509.ExtKeyUsageClientAuth}
	}
	for _, c := range []struct {
		name string
		dst  **keyPair
		spec certSpec
		ca   *issuer
	}{
		{"apiserver", &p.APIServer, certSpec{
			CommonName: "kube-apiserver",
			Usage:      x509.ExtKeyUsageServerAuth,
			DNSNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP},
		}, ca},
		{"admin", &p.Admin, client("sluice-admin", "system:masters"), ca},
		{"controller-manager", &p.ControllerManager, client("system:kube-controller-manager"), ca},
		{"scheduler", &p.Scheduler, client("system:kube-scheduler"), ca},
		{"front-proxy-client", &p.FrontProxyClient, client(frontProxyClientCN), frontProxyCA},
	} {
		if *c.dst, err = ensureKeyPair(dir, c.name, c.spec, c.ca); err != nil {
			return nil, err
		}
	}

	p.SAKeyFile, p.SAPubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := ensureServiceAccountKey(p.SAKeyFile, p.SAPubFile); err != nil {
		return nil, err
	}
	return p, nil
}

// ensureCA loads or creates the self-signed CA dir/<name>.{crt,key}, stores
// its pair in *dst and returns it parsed, ready to sign.
func ensureCA(dir, name, commonName string, dst **keyPair) (*issuer, error) {
	kp, err := ensureKeyPair(dir, name, certSpec{CommonName: commonName, IsCA: true}, nil)
	if err != nil {
		return nil, err
	}
	cert, key, err := parseKeyPair(kp)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	*dst = kp
	return &issuer{cert: cert, key: key}, nil
}

// ensureKeyPair returns dir/<name>.crt and dir/<name>.key, issuing a new
// certificate from spec when either file is missing. A nil ca self-signs.
func ensureKeyPair(dir, name string, spec certSpec, ca *issuer) (*keyPair, error) {
	kp := &keyPair{CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	certPEM, certErr := os.ReadFile(kp.CertFile)
	keyPEM, keyErr := os.ReadFile(kp.KeyFile)
	if certErr == nil && keyErr == nil {
		kp.CertPEM, kp.KeyPEM = certPEM, keyPEM
		return kp, nil
	}
	for _, err := range []error{certErr, keyErr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: spec.CommonName, Organization: spec.Orgs},
		NotBefore:             time.Now().Add(-time.Hour), // tolerate small clock skew
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  spec.IsCA,
		DNSNames:              spec.DNSNames,
		IPAddresses:           spec.IPs,
	}
	if spec.IsCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{spec.Usage}
	}
	if ca == nil {
		ca = &issuer{cert: tmpl, key: key} // self-signed
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("create certificate %s: %w", name, err)
	}
	if kp.KeyPEM, err = encodePKCS8(key); err != nil {
		return nil, err
	}
	kp.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFiles(kp.KeyFile, kp.KeyPEM, kp.CertFile, kp.CertPEM); err != nil {
		return nil, err
	}
	return kp, nil
}

// ensureServiceAccountKey creates the RSA key pair used to sign and verify
// service-account tokens, unless the private key already exists.
func ensureServiceAccountKey(keyFile, pubFile string) error {
	if _, err := os.Stat(keyFile); err == nil {
		if _, err := os.Stat(pubFile); err == nil {
			return nil
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	keyPEM, err := encodePKCS8(key)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	return writeFiles(keyFile, keyPEM, pubFile, pubPEM)
}

// parseKeyPair parses the certificate and the private key of kp.
func parseKeyPair(kp *keyPair) (*x509.Certificate, crypto.Signer, error) {
	block, _ := pem.Decode(kp.CertPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", kp.CertFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kp.CertFile, err)
	}
	if block, _ = pem.Decode(kp.KeyPEM); block == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", kp.KeyFile)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kp.KeyFile, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: unsupported key type %T", kp.KeyFile, key)
	}
	return cert, signer, nil
}

func encodePKCS8(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeFiles writes a private key (mode 0600) and then its public part (0644),
// so a pair is only considered complete once both exist.
func writeFiles(keyFile string, keyPEM []byte, pubFile string, pubPEM []byte) error {
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(pubFile, pubPEM, 0o644)
}

// writeKubeconfig writes a kubeconfig for server with the CA and the client
// certificate embedded, so it is self-contained.
func writeKubeconfig(path, server string, ca, client *keyPair, user string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["sluice"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca.CertPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: client.CertPEM, ClientKeyData: client.KeyPEM}
	cfg.Contexts["sluice"] = &clientcmdapi.Context{Cluster: "sluice", AuthInfo: user}
	cfg.CurrentContext = "sluice"
	return clientcmd.WriteToFile(*cfg, path)
}

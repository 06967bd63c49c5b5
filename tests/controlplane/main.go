// Command sluice-controlplane runs a real Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) on loopback, built
// from Kubernetes' own Go modules, for Sluice's integration tests.
//
// One binary, several subcommands:
//
//	sluice-controlplane up --state-dir DIR       orchestrator (see up.go)
//	sluice-controlplane etcd --data-dir D ...    embedded etcd (see etcd.go)
//	sluice-controlplane kube-apiserver ...       upstream cobra command
//	sluice-controlplane kube-controller-manager ...
//	sluice-controlplane kube-scheduler ...
//
// `up` re-executes this binary once per component, so every component runs in
// its own process with its own global registries (flags, metrics, feature
// gates), exactly as with the upstream binaries.
package main

import (
	"fmt"
	"os"
	"sort"

	"github.com/spf13/cobra"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as in the upstream mains
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	_ "time/tzdata" // CronJob time zone support, as in the upstream mains
)

// Names of the child components; also their subcommand and log file names.
const (
	compEtcd              = "etcd"
	compAPIServer         = "kube-apiserver"
	compControllerManager = "kube-controller-manager"
	compScheduler         = "kube-scheduler"
)

// kubeCommands maps a subcommand to the constructor of the upstream command.
// Constructors are only called for the subcommand actually run.
var kubeCommands = map[string]func() *cobra.Command{
	compAPIServer:         apiserver.NewAPIServerCommand,
	compControllerManager: controllermanager.NewControllerManagerCommand,
	compScheduler:         func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]

	if newCmd, ok := kubeCommands[sub]; ok {
		cmd := newCmd()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd)) // same wrapper as the upstream main packages
	}

	var err error
	switch sub {
	case "up":
		err = runUp(args)
	case compEtcd:
		err = runEtcd(args)
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown subcommand %q\n", sub)
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sluice-controlplane %s: %v\n", sub, err)
		os.Exit(1)
	}
}

func usage() {
	names := []string{"up", compEtcd}
	for n := range kubeCommands {
		names = append(names, n)
	}
	sort.Strings(names[2:])
	fmt.Fprintf(os.Stderr, "usage: %s <subcommand> [flags]\nsubcommands: %v\n", os.Args[0], names)
}

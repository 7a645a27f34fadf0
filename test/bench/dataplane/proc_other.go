//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

var errNoProcfs = errors.New("CPU accounting needs Linux")

// setParentDeathSignal has no equivalent outside Linux; stop ends the children as usual.
func setParentDeathSignal(*exec.Cmd) {}

func selfCPU() (time.Duration, error) { return 0, errNoProcfs }

func treeCPU(int) (time.Duration, error) { return 0, errNoProcfs }

func machineCPU() (machineTimes, error) { return machineTimes{}, errNoProcfs }

func childPIDs(int) []int { return nil }

import Configuration
import Routing
import Testing

@Suite("Config file")
struct ConfigTests {
    let yaml = """
        agent:
          address: unix:/run/agent.sock
          token_file: /run/token
        fs:
          mode: write
          local: ["^/data/cache"]
          read_only: ['^/etc/app/']
          not_found: ["secret"]
        env:
          remote: true
          include: ["DB_*"]
          exclude: ["DB_PASSWORD"]
        """

    @Test func yamlAndJSONGiveTheSameConfig() throws {
        let fromYAML = try SessionConfig.parse(yaml)
        let json = """
            {"agent": {"address": "unix:/run/agent.sock", "token_file": "/run/token"},
             "fs": {"mode": "write", "local": ["^/data/cache"], "read_only": ["^/etc/app/"], "not_found": ["secret"]},
             "env": {"remote": true, "include": ["DB_*"], "exclude": ["DB_PASSWORD"]}}
            """
        #expect(try SessionConfig.parse(json) == fromYAML)
        #expect(try fromYAML.fileSystemMode() == .write)
        #expect(
            fromYAML.fs?.overrides
                == FileOverrides(local: ["^/data/cache"], readOnly: ["^/etc/app/"], notFound: ["secret"]))
        #expect(fromYAML.agent?.tokenFile == "/run/token")
    }

    @Test func kubernetesSettingsComeFromTheirSection() throws {
        let config = try SessionConfig.parse(
            """
            kubernetes:
              target: deployment/web/container/app
              namespace: shop
              context: staging
              kubeconfig: /home/dev/.kube/staging
              agent_image: registry.example/sysmirror-agent:1
              agent_timeout: 120
            """)
        let kubernetes = try #require(config.kubernetes)
        #expect(kubernetes.target == "deployment/web/container/app")
        #expect(kubernetes.namespace == "shop")
        #expect(kubernetes.context == "staging")
        #expect(kubernetes.kubeconfig == "/home/dev/.kube/staging")
        #expect(kubernetes.agentImage == "registry.example/sysmirror-agent:1")
        #expect(kubernetes.agentTimeout == 120)
        #expect(throws: ConfigError("unknown key \"kubernetes.pod\" (known in kubernetes: target, namespace, context, kubeconfig, agent_image, agent_timeout)")) {
            try SessionConfig.parse("kubernetes:\n  pod: web\n")
        }
        #expect(throws: ConfigError("kubernetes.agent_timeout: expected a number")) {
            try SessionConfig.parse("kubernetes:\n  agent_timeout: soon\n")
        }
    }

    @Test func outgoingRulesComeFromTheirSection() throws {
        let config = try SessionConfig.parse(
            "outgoing:\n  enabled: false\n  local: ['10.0.0.0/8']\n  remote: ['udp://10.96.0.10:53']\n")
        #expect(config.outgoing?.enabled == false)
        #expect(config.outgoing?.local == ["10.0.0.0/8"])
        #expect(config.outgoing?.remote == ["udp://10.96.0.10:53"])
        #expect(throws: ConfigError.self) { try SessionConfig.parse("outgoing:\n  remotes: []\n") }
    }

    @Test func incomingRulesComeFromTheSectionAndFlagsWin() throws {
        let config = try SessionConfig.parse(
            """
            incoming:
              mode: steal
              ports: [18080, 8080, 9090, 19090]
              ignore_ports: [9090]
              port_mapping: ["18080:8080"]
              http_filter: {header: "^X-Dev: me$", path: "^/api/"}
            """)
        let rules = try config.incomingRules(mode: nil, portMap: ["19090:9090"], header: nil, path: nil)
        #expect(rules.mode == .steal && rules.headerPattern == "^X-Dev: me$" && rules.pathPattern == "^/api/")
        #expect(rules.portMap == [18080: 8080, 19090: 9090])
        #expect(rules.podPort(forLocal: 18080) == 8080)
        #expect(rules.podPort(forLocal: 8080) == 8080)
        #expect(rules.podPort(forLocal: 9090) == nil)  // ignored
        #expect(rules.podPort(forLocal: 7070) == nil)  // not among the ports
        // A filter alone means steal; nothing means mirror; off takes nothing.
        let empty = SessionConfig()
        #expect(try empty.incomingRules(mode: nil, portMap: [], header: "X", path: nil).mode == .steal)
        #expect(try empty.incomingRules(mode: nil, portMap: [], header: nil, path: nil).mode == .mirror)
        #expect(try empty.incomingRules(mode: .off, portMap: [], header: nil, path: nil).podPort(forLocal: 80) == nil)
        #expect(throws: ConfigError.self) { try empty.incomingRules(mode: .mirror, portMap: [], header: "X", path: nil) }
        #expect(throws: ConfigError.self) { try empty.incomingRules(mode: nil, portMap: ["80"], header: nil, path: nil) }
        #expect(throws: ConfigError.self) {
            try SessionConfig.parse("incoming:\n  mode: grab\n").incomingRules(mode: nil, portMap: [], header: nil, path: nil)
        }
        #expect(throws: ConfigError.self) {
            try SessionConfig.parse("incoming:\n  port_mapping: ['0:80']\n").incomingRules(
                mode: nil, portMap: [], header: nil, path: nil)
        }
    }

    @Test func anEmptyFileIsAnEmptyConfig() throws {
        #expect(try SessionConfig.parse("\n") == SessionConfig())
    }

    @Test(
        "Mistakes are named",
        arguments: [
            ("fs:\n  mdoe: read\n", "unknown key \"fs.mdoe\""),
            ("flies: {}\n", "unknown key \"flies\""),
            ("fs:\n  local: /data\n", "fs.local: expected a list of strings"),
            ("{\"fs\": {\"mode\": 3}}", "fs.mode: expected a string"),
            ("fs: [\n", "not valid YAML"),
            ("incoming:\n  http_filter: {heder: x}\n", "unknown key \"incoming.http_filter.heder\""),
            ("incoming:\n  ports: [http]\n", "incoming.ports"),
        ])
    func mistakes(text: String, expected: String) {
        #expect {
            try SessionConfig.parse(text)
        } throws: { error in
            "\(error)".contains(expected)
        }
    }

    @Test func anUnknownModeIsNamed() throws {
        let config = try SessionConfig.parse("fs:\n  mode: reed\n")
        #expect(throws: ConfigError("fs.mode: \"reed\" is not one of local, read, write")) {
            try config.fileSystemMode()
        }
    }
}

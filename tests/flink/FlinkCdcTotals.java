import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.CloseableIterator;

/**
 * Runs a Flink SQL file (tests/flink/job.sql) on a local mini-cluster in this JVM and prints the
 * result of its last statement, a SELECT over changelog tables.
 *
 * <pre>
 * java -cp classes:lib/* FlinkCdcTotals --sql job.sql [--set name=value ...] [--follow]
 *                                       [--parallelism N]
 * </pre>
 *
 * <p>Default (bounded: the SQL reads up to the offsets that were latest at start): applies the
 * changelog (+I / -U / +U / -D) to a multiset of rows and prints the final rows, one per line, tab
 * separated, NULL as \N, sorted. {@code --follow} (unbounded) prints every changelog row as it
 * arrives instead: {@code <epoch ms>\t<+I|-U|+U|-D>\t<fields...>}, flushed at once. Either way the
 * first stdout line is {@code # started <epoch ms>}: when the job was submitted.
 *
 * <p>{@code ${name}} in the SQL is replaced by the value of {@code --set name=value} (an unknown
 * placeholder is an error); {@code SET 'key' = 'value'} statements set the table configuration.
 */
public final class FlinkCdcTotals {
    private static final Pattern SET = Pattern.compile(
            "(?is)^SET\\s+'([^']+)'\\s*=\\s*'([^']*)'$");
    private static final Pattern PLACEHOLDER = Pattern.compile("\\$\\{([A-Za-z0-9_]+)}");

    public static void main(String[] args) throws Exception {
        String sqlPath = null;
        boolean follow = false;
        int parallelism = 1;
        Map<String, String> vars = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--sql" -> sqlPath = args[++i];
                case "--follow" -> follow = true;
                case "--parallelism" -> parallelism = Integer.parseInt(args[++i]);
                case "--set" -> {
                    String kv = args[++i];
                    int eq = kv.indexOf('=');
                    if (eq < 1) {
                        throw new IllegalArgumentException("--set expects name=value, got " + kv);
                    }
                    vars.put(kv.substring(0, eq), kv.substring(eq + 1));
                }
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (sqlPath == null) {
            throw new IllegalArgumentException("--sql FILE is required");
        }
        List<String> statements = new ArrayList<>();
        for (String s : statements(Files.readString(Path.of(sqlPath)))) {
            statements.add(substitute(s, vars));
        }

        Configuration conf = new Configuration();
        conf.setString("parallelism.default", Integer.toString(parallelism));
        // A modest mini-cluster: this runs beside PostgreSQL, Kafka and ClickHouse on 2 cores.
        conf.setString("taskmanager.numberOfTaskSlots", Integer.toString(parallelism));
        conf.setString("rest.bind-address", "127.0.0.1");
        conf.setString("rest.port", "0");
        TableEnvironment tEnv = TableEnvironment.create(
                EnvironmentSettings.newInstance().inStreamingMode().withConfiguration(conf).build());

        String query = null;
        for (int i = 0; i < statements.size(); i++) {
            String s = statements.get(i);
            Matcher m = SET.matcher(s);
            if (m.matches()) {
                tEnv.getConfig().getConfiguration().setString(m.group(1), m.group(2));
            } else if (i == statements.size() - 1) {
                query = s;
            } else {
                tEnv.executeSql(s);
            }
        }
        if (query == null) {
            throw new IllegalArgumentException(sqlPath + ": no final SELECT statement");
        }

        PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
        long started = System.currentTimeMillis();
        TableResult result = tEnv.executeSql(query);
        out.println("# started " + System.currentTimeMillis());
        out.flush();
        String jobId = result.getJobClient().map(c -> c.getJobID().toString()).orElse("?");
        System.err.printf("[flink] job %s submitted %d ms after start%n", jobId,
                System.currentTimeMillis() - started);

        // Row text -> multiplicity: the materialised result of the changelog.
        Map<String, Long> rows = new TreeMap<>();
        long changes = 0;
        try (CloseableIterator<Row> it = result.collect()) {
            while (it.hasNext()) {
                Row row = it.next();
                changes++;
                String text = text(row);
                if (follow) {
                    out.println(System.currentTimeMillis() + "\t" + row.getKind().shortString() + "\t" + text);
                    out.flush();
                    continue;
                }
                long delta = (row.getKind() == RowKind.INSERT || row.getKind() == RowKind.UPDATE_AFTER) ? 1 : -1;
                rows.merge(text, delta, Long::sum);
                if (rows.get(text) == 0) {
                    rows.remove(text);
                }
            }
        }
        System.err.printf("[flink] job finished after %d ms: %d changelog rows%n",
                System.currentTimeMillis() - started, changes);
        for (Map.Entry<String, Long> e : rows.entrySet()) {
            if (e.getValue() < 0) {
                throw new IllegalStateException("row retracted more often than added: " + e.getKey());
            }
            for (long n = 0; n < e.getValue(); n++) {
                out.println(e.getKey());
            }
        }
        out.flush();
    }

    private static String text(Row row) {
        StringBuilder sb = new StringBuilder();
        for (int f = 0; f < row.getArity(); f++) {
            if (f > 0) {
                sb.append('\t');
            }
            Object v = row.getField(f);
            sb.append(v == null ? "\\N" : v.toString());
        }
        return sb.toString();
    }

    private static String substitute(String sql, Map<String, String> vars) {
        Matcher m = PLACEHOLDER.matcher(sql);
        StringBuilder sb = new StringBuilder();
        while (m.find()) {
            String v = vars.get(m.group(1));
            if (v == null) {
                throw new IllegalArgumentException("no --set " + m.group(1) + "=... for ${" + m.group(1) + "}");
            }
            m.appendReplacement(sb, Matcher.quoteReplacement(v));
        }
        m.appendTail(sb);
        return sb.toString();
    }

    /** The statements of a SQL file: `--` comments dropped, split at `;` ending a line. */
    private static List<String> statements(String sql) {
        List<String> out = new ArrayList<>();
        StringBuilder cur = new StringBuilder();
        for (String line : sql.split("\n")) {
            String code = line.strip().startsWith("--") ? "" : line;
            if (code.isBlank()) {
                continue;
            }
            cur.append(code).append('\n');
            if (code.strip().endsWith(";")) {
                String s = cur.toString().strip();
                out.add(s.substring(0, s.length() - 1).strip());
                cur.setLength(0);
            }
        }
        if (!cur.toString().isBlank()) {
            out.add(cur.toString().strip());
        }
        return out;
    }
}
